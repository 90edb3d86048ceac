"""One drift check: the current window of served predictions against the champion's reference.

The reference is a sample of the champion's own training rows, scored by the
champion's ONNX model (labels, calibrated confidence, pooled embeddings), cached
per champion version. Each check is a ``drift_checks`` row with every signal's
score and threshold, the verdict and its reason, and an Evidently HTML report.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, select
from sqlmodel import Session, col

from refitd.core import registry
from refitd.core.artifacts import TRAIN_ROWS_FILE, ArtifactStore
from refitd.core import reference as refdata
from refitd.core.db import session_scope
from refitd.core.errors import NoChampionError
from refitd.core.labels import predictions_with_labels
from refitd.core.settings import Settings
from refitd.core.tables import DriftCheck, ModelVersion, utcnow
from refitd.daemon.drift.alerts import Webhook, drift_payload
from refitd.daemon.drift.signals import Signal, add_descriptors, specs_from, embedding_signal, value_drift_report, verdict, vocabulary
from refitd.serving.runtime import OnnxClassifier

log = logging.getLogger(__name__)


def load_window(session: Session, *, size: int, minutes: float | None = None) -> pd.DataFrame:
    """The last ``size`` predictions (within the last ``minutes`` when given), with embedding and feedback label."""
    after = None if minutes is None else utcnow() - timedelta(minutes=minutes)
    return predictions_with_labels(session, unlabelled=True, after=after, latest=size)


def embeddings_of(frame: pd.DataFrame) -> np.ndarray:
    return np.stack([np.frombuffer(b, dtype=np.float16).astype(np.float32) for b in frame["embedding"]])


def reference_for(settings: Settings, champion: ModelVersion) -> tuple[pd.DataFrame, np.ndarray]:
    """The champion's training rows scored by the champion; cached per version."""
    cache = settings.home / "drift" / f"reference-{champion.version}.parquet"
    if cache.is_file():
        frame = pd.read_parquet(cache)
        return frame.drop(columns=["embedding"]), embeddings_of(frame)
    folder = ArtifactStore(settings.models_dir).verify(champion.version)
    if (folder / TRAIN_ROWS_FILE).is_file():
        rows = pd.read_parquet(folder / TRAIN_ROWS_FILE)
    else:  # an artifact from before training rows were stored: the reference dataset's training split
        data = refdata.load(settings)
        rows = data[data["split"] == "train"]
    rows = rows.sample(n=min(settings.drift.reference_size, len(rows)), random_state=0)
    runtime = OnnxClassifier(champion.version, folder, provider=settings.serving.provider, threads=settings.serving.threads)
    runtime.load()
    frame, emb = score(runtime, rows["text"].tolist())
    cache.parent.mkdir(parents=True, exist_ok=True)
    frame.assign(embedding=[e.astype(np.float16).tobytes() for e in emb]).to_parquet(cache)
    return frame, emb


def score(runtime: OnnxClassifier, texts: list[str], *, batch: int = 64) -> tuple[pd.DataFrame, np.ndarray]:
    """Texts scored by a model: label and confidence per text, and its embeddings at the precision the
    prediction log stores them (float16), so a reference reads the same as logged traffic."""
    labels, conf, embs = [], [], []
    for i in range(0, len(texts), batch):
        out = runtime.predict(texts[i : i + batch])
        labels += out.labels
        conf += out.scores.max(axis=1).tolist()
        embs.append(out.embeddings.astype(np.float16).astype(np.float32))
    frame = pd.DataFrame({"text": texts, "label": labels, "confidence": conf})
    return frame, np.concatenate(embs)


def performance(window: pd.DataFrame, champion: ModelVersion, *, min_labels: int = 30,
                max_drop: float = 0.05) -> tuple[dict[str, Any], Signal | None]:
    """Measured accuracy on the labelled rows beside the label-free estimate (mean calibrated confidence)."""
    labelled = window[window["true_label"].notna()]
    estimate = float(window["confidence"].mean()) if len(window) else None
    out: dict[str, Any] = {"labelled": int(len(labelled)), "estimated_accuracy": estimate}
    if len(labelled) < min_labels:
        return out, None
    measured = float((labelled["label"] == labelled["true_label"]).mean())
    test_acc, held_out = expected_accuracy(champion, default=measured)
    out |= {"measured_accuracy": measured, "champion_test_accuracy": test_acc, "champion_test_set": held_out,
            "estimate_error": None if estimate is None else estimate - measured}
    drop = test_acc - measured
    return out, Signal("performance", f"accuracy drop vs champion {held_out} test", drop, max_drop, drop >= max_drop)


def expected_accuracy(champion: ModelVersion, *, default: float, min_rows: int = 100) -> tuple[float, str]:
    """The accuracy live traffic should show: on the recent test set (production labels it was not trained
    on) when the refit had one of ``min_rows`` or more, else on the frozen test set."""
    recent = ((champion.metrics or {}).get("candidate") or {}).get("recent") or {}
    if recent.get("n", 0) >= min_rows and "accuracy" in recent:
        return float(recent["accuracy"]), "recent"
    return float(champion.frozen_scores.get("accuracy", default)), "frozen"


@dataclass
class Outcome:
    """Every signal of one check, the performance figures and the verdict."""

    snapshot: Any
    signals: list[Signal]
    performance: dict[str, Any]
    verdict: str
    reason: str

    def signal_rows(self) -> dict[str, Any]:
        return {s.name: s.as_dict() for s in self.signals} | {"_performance": self.performance}


def compute(settings: Settings, champion: ModelVersion, reference: pd.DataFrame, ref_emb: np.ndarray,
            window: pd.DataFrame, window_emb: np.ndarray) -> Outcome:
    """All signals of the window against the reference, and the verdict rule over them."""
    d = settings.drift
    # The vocabulary comes from one half of the reference and the reference rows from the other,
    # so the reference's own out-of-vocabulary share is an honest baseline, not zero.
    vocab = vocabulary(reference["text"].iloc[0::2])
    reference, ref_emb = reference.iloc[1::2], ref_emb[1::2]
    snapshot, signals = value_drift_report(add_descriptors(reference, vocab), add_descriptors(window, vocab),
                                           specs_from(d.methods, d.thresholds))
    signals.append(embedding_signal(ref_emb, window_emb, threshold=d.thresholds.get("embedding", 0.55)))
    perf, perf_signal = performance(window, champion, min_labels=d.min_labels, max_drop=d.performance_drop)
    decided, reason = verdict(signals, window=len(window), min_window=d.min_window, min_drifted=d.min_drifted_signals)
    if perf_signal is not None:
        signals.append(perf_signal)
        if perf_signal.drifted:
            decided = "drifted"
            reason = (f"measured accuracy fell {perf_signal.score:.3f} below the champion's "
                      f"{perf.get('champion_test_set', 'frozen')} test score; {reason}")
    return Outcome(snapshot, signals, perf, decided, reason)


def run_check(settings: Settings, engine: Engine) -> DriftCheck:
    """Check the current window now; store the row and the HTML report; return the row."""
    start = time.perf_counter()
    d = settings.drift
    with session_scope(engine) as session:
        champion = registry.get_champion(session)
        if champion is None:
            raise NoChampionError()
        window = load_window(session, size=d.window_size, minutes=d.window_minutes)
    row = DriftCheck(model_version=champion.version, window_size=len(window), verdict="insufficient_data",
                     window_start=window["created_at"].min() if len(window) else None,
                     window_end=window["created_at"].max() if len(window) else None)
    if len(window) < d.min_window:
        row.verdict, row.reason = verdict([], window=len(window), min_window=d.min_window)
    else:
        reference, ref_emb = reference_for(settings, champion)
        outcome = compute(settings, champion, reference, ref_emb, window, embeddings_of(window))
        row.verdict, row.reason, row.signals = outcome.verdict, outcome.reason, outcome.signal_rows()
        row.report_path = str(_save_html(settings, outcome.snapshot))
        _add_to_workspace(settings, outcome.snapshot, name=f"{champion.version} {row.verdict}")
    row.duration_s = round(time.perf_counter() - start, 2)
    with session_scope(engine) as session:
        previous = _last_verdict(session)
        session.add(row)
        session.flush()
        session.refresh(row)
    log.info("drift check %s: %s — %s", row.id, row.verdict, row.reason)
    if d.webhook_url and row.verdict != "insufficient_data" and row.verdict != previous:
        Webhook(d.webhook_url, engine, timeout_s=d.webhook_timeout_s, retries=d.webhook_retries).send(
            drift_payload(row, previous))
    return row


def _last_verdict(session: Session) -> str | None:
    """The verdict of the newest check that had enough data (an alert fires when this changes)."""
    return session.scalars(
        select(DriftCheck.verdict).where(DriftCheck.verdict != "insufficient_data").order_by(col(DriftCheck.id).desc())
    ).first()


def _save_html(settings: Settings, snapshot: Any) -> Path:
    path = settings.reports_dir / f"drift-{utcnow():%Y%m%dT%H%M%S%f}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    return path


def workspace_project(settings: Settings):  # type: ignore[no-untyped-def]
    """The local Evidently workspace under the state dir and this model's project in it."""
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(settings.home / "workspace"))
    name = f"refitd {settings.model.name}"
    found = workspace.search_project(name)
    project = found[0] if found else workspace.create_project(name, description="refitd drift checks")
    return workspace, project


def _add_to_workspace(settings: Settings, snapshot: Any, *, name: str) -> None:
    """Keep the history: `evidently ui --workspace <home>/workspace` lists every check."""
    try:
        workspace, project = workspace_project(settings)
        workspace.add_run(project.id, snapshot, name=name)
    except Exception:  # noqa: BLE001 - the HTML report and the row are already written
        log.exception("could not add the drift snapshot to the Evidently workspace")


def list_checks(session: Session, *, limit: int = 20) -> list[DriftCheck]:
    return list(session.scalars(select(DriftCheck).order_by(col(DriftCheck.id).desc()).limit(limit)))
