"""One drift check: the current window of served predictions against the champion's reference.

The reference (:func:`~refitd.daemon.drift.baseline.reference_rows`: the champion's training rows, or the
production traffic it was refit on) is scored by the champion's ONNX model (labels, calibrated confidence, pooled
embeddings) and cached per champion version under ``<home>/drift``; beside it, its calibration
(the null of every signal at the window size, ``calibration``), rebuilt when the reference, the
window sizes or the false-alarm settings change. The window is seen as the champion sees it
(:func:`champion_view`): its answers where it served a row, and its labels, confidences and
embeddings computed at the check for rows another version served (just after a promotion) and for
embeddings the log did not keep (``serving.log_embedding_share``); measured accuracy counts only
the answers the champion gave. Each check is a ``drift_checks`` row with every signal's
score, p-value and threshold, the verdict (held for ``drift.consecutive`` checks, see
:func:`refitd.daemon.drift.verdict.settle`) and its reason, and an Evidently HTML report.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine
from sqlmodel import Session

from refitd.core import alerts, registry
from refitd.core.artifacts import ArtifactStore
from refitd.core.db import db_now, session_scope
from refitd.core.errors import NoChampionError
from refitd.core.labels import predictions_with_labels
from refitd.core.settings import Settings
from refitd.core.tables import DriftCheck, ModelVersion, utcnow
from refitd.daemon.alerts import Sender
from refitd.daemon.drift import CACHE_SCRATCH_PREFIX, cache_file, report
from refitd.daemon.drift.alerts import drift_payload
from refitd.daemon.drift.baseline import reference_rows
from refitd.daemon.drift.calibration import METHODS, VERSION, Calibration, Reference, calibrate, judge, scores
from refitd.daemon.drift.performance import performance
from refitd.daemon.drift.signals import (Signal, add_descriptors, calibrated_verdict, embedding_signal, specs_from,
                                         value_drift_report, verdict)
from refitd.daemon.drift.verdict import last_verdict, settle
from refitd.serving.runtime import OnnxClassifier

log = logging.getLogger(__name__)

# The champion's latest labelled answers before a window that the label-free estimate's threshold is set on
# (performance.label_free_estimate). Replayed over a default demo's 31 checks (2026-12-07): mean absolute error
# 0.072 with 200, 0.060 with 500, 0.053 with 1,000, 0.051 with 2,000, against 0.074 for the refit's threshold.
ESTIMATE_HISTORY_ROWS = 1000


def load_window(session: Session, *, size: int, minutes: float | None = None,
                sources: list[str] | None = None) -> pd.DataFrame:
    """The last ``size`` predictions (within the last ``minutes`` when given), with embedding and feedback label
    (from ``sources`` when given; another source's label reads as none)."""
    after = None if minutes is None else utcnow() - timedelta(minutes=minutes)
    return predictions_with_labels(session, unlabelled=True, after=after, latest=size, sources=sources)


def embeddings_of(frame: pd.DataFrame) -> np.ndarray:
    return np.stack([np.frombuffer(b, dtype=np.float16).astype(np.float32) for b in frame["embedding"]])


def reference_for(settings: Settings, champion: ModelVersion, engine: Engine) -> tuple[pd.DataFrame, np.ndarray]:
    """The champion's reference rows (:func:`~refitd.daemon.drift.baseline.reference_rows`) scored by the
    champion; cached per version, with where the rows came from in ``reference-<version>.json`` beside them."""
    cached = _cached_reference(settings, champion.version)
    if cached is not None:
        return cached
    runtime = champion_runtime(settings, champion)
    rows, provenance = reference_rows(settings, champion, runtime.folder, engine)
    frame, emb = score(runtime, rows["text"].tolist())
    # Each file written aside and renamed: a check stopped mid-write (its timeout, a daemon stop) leaves no torn
    # cache; the record last, so a cache without one is drawn again.
    _write_aside(cache_file(settings, champion.version, ".parquet"),
                 lambda path: frame.assign(embedding=[e.astype(np.float16).tobytes() for e in emb]).to_parquet(path))
    _write_record(settings, champion.version,
                  provenance | {"rows": len(frame), "reference_size": settings.drift.reference_size})
    log.info("drift reference for %s: %d rows, %s", champion.version, len(frame), provenance["source"])
    return frame, emb


def _cached_reference(settings: Settings, version: str) -> tuple[pd.DataFrame, np.ndarray] | None:
    """This host's cached reference of ``version``, or None to draw it again: none cached, no readable record of
    where it came from, drawn at another ``drift.reference_size`` (a changed setting takes effect at the next
    check), or damaged. A record from before the size was kept in it is taken as drawn at the size in force now
    when it holds no more rows, and says so from then on."""
    cache, size = cache_file(settings, version, ".parquet"), settings.drift.reference_size
    record = reference_provenance(settings, version)
    if not cache.is_file() or not record:
        return None
    if "reference_size" not in record and int(record.get("rows", 0)) <= size:
        record["reference_size"] = size
        _write_record(settings, version, record)
    if record.get("reference_size") != size:
        log.info("drift reference for %s: drawn at drift.reference_size %s, now %d; drawing it again",
                 version, record.get("reference_size", f"(not recorded, {record.get('rows')} rows)"), size)
        return None
    try:
        frame = pd.read_parquet(cache)
        return frame.drop(columns=["embedding"]), embeddings_of(frame)
    except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt, never a check that fails for good
        log.warning("drift reference cache %s unreadable (%s: %s); rebuilding it", cache.name, type(exc).__name__, exc)
        return None


def _write_aside(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` a file to a scratch name beside ``path``, then rename it there. A failed write (a full disk) leaves
    nothing behind; a killed one is swept at the next start (:func:`refitd.daemon.drift.sweep`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f"{CACHE_SCRATCH_PREFIX}{path.name}.{os.getpid()}")
    try:
        write(scratch)
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)


def _write_record(settings: Settings, version: str, record: dict[str, Any]) -> None:
    _write_aside(cache_file(settings, version, ".json"),
                 lambda path: path.write_text(json.dumps(record, default=str)))


def reference_provenance(settings: Settings, version: str) -> dict[str, Any]:
    """Where a cached reference's rows came from, and the size it was drawn at (empty when there is no readable
    record: the reference is then drawn again)."""
    path = cache_file(settings, version, ".json")
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def champion_runtime(settings: Settings, champion: ModelVersion) -> OnnxClassifier:
    """The champion loaded as serving loads it (verified files, same precision), for scoring in a check."""
    folder = ArtifactStore.from_settings(settings).verify(champion.version)
    runtime = OnnxClassifier(champion.version, folder, provider=settings.serving.provider,
                             threads=settings.serving.threads, precision=settings.serving.precision)
    runtime.load()
    return runtime


def champion_view(settings: Settings, champion: ModelVersion, window: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The window as the champion sees it, and its embeddings in the champion's space.

    A row the champion served keeps its logged label and confidence, and its stored embedding when the log
    kept one (``serving.log_embedding_share``). A row another version served (the window just after a
    promotion) gets the champion's label and confidence, computed now, so prediction and confidence drift
    compare one model's answers with that model's answers on the reference; its logged answer stays in
    ``model_version`` for :func:`performance`, which counts only the champion's own answers."""
    served = (window["model_version"] == champion.version).to_numpy()
    kept = window["embedding"].notna().to_numpy() & served
    if kept.all():
        return window, embeddings_of(window)
    fresh, emb = score(champion_runtime(settings, champion), window.loc[~kept, "text"].tolist())
    out = np.empty((len(window), emb.shape[1]), dtype=np.float32)
    out[~kept] = emb
    if kept.any():
        out[kept] = embeddings_of(window[kept])
    others = ~served[~kept]  # among the scored rows, those the champion did not serve
    if others.any():
        labels, confidence = window["label"].to_numpy(dtype=object).copy(), window["confidence"].to_numpy(dtype=float)
        labels[~served] = fresh["label"].to_numpy(dtype=object)[others]
        confidence[~served] = fresh["confidence"].to_numpy(dtype=float)[others]
        window = window.assign(label=labels, confidence=confidence)
    return window, out


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


@dataclass
class Outcome:
    """Every signal of one check, the performance figures and the verdict (before :func:`refitd.daemon.drift.verdict.settle`)."""

    snapshot: Any
    signals: list[Signal]
    performance: dict[str, Any]
    verdict: str
    reason: str
    calibration: dict[str, Any] | None = None

    def signal_rows(self) -> dict[str, Any]:
        rows = {s.name: s.as_dict() for s in self.signals} | {"_performance": self.performance}
        return rows | ({"_calibration": self.calibration} if self.calibration else {})


def compute(settings: Settings, champion: ModelVersion, reference: Reference, window: pd.DataFrame,
            window_emb: np.ndarray, calibration: Calibration | None, history: pd.DataFrame | None = None) -> Outcome:
    """All signals of the window against the reference, and the verdict over them: calibrated when a
    calibration is given, else the fixed-threshold rule (``drift.calibrated = false``)."""
    d = settings.drift
    fixed = set(d.methods) | set(d.thresholds)
    specs = specs_from(d.methods, d.thresholds)
    if calibration is not None:  # where Evidently computes the calibrated statistic, its report shows our threshold
        specs = tuple(replace(s, threshold=calibration.threshold(s.name))
                      if s.name not in fixed and METHODS[s.name] == s.method else s for s in specs)
    described = add_descriptors(window, reference.featurizer.vocab)
    snapshot, signals = value_drift_report(reference.frame, described, specs)
    signals.append(embedding_signal(reference.emb, window_emb, threshold=d.thresholds.get("embedding", 0.55)))
    if calibration is None:
        decided, reason = verdict(signals, window=len(window), min_window=d.min_window,
                                  min_drifted=d.min_drifted_signals)
    else:
        scored = scores(reference.features, reference.featurizer.transform(window, window_emb))
        signals = judge(signals, scored, calibration, fixed)
        decided, reason = calibrated_verdict(signals, cutoff=calibration.cutoff, rate=calibration.false_alarm_rate)
    perf, perf_signal = performance(window, champion, min_labels=d.min_labels, max_drop=d.performance_drop,
                                     alpha=d.false_alarm_rate, history=history)
    if perf_signal is not None:
        signals.append(perf_signal)
        if perf_signal.drifted:
            decided = "drifted"
            reason = (f"measured accuracy fell {perf_signal.score:.3f} below the champion's "
                      f"{perf.get('champion_test_set', 'frozen')} test score (p {perf_signal.p_value:.2g}); {reason}")
    summary = None if calibration is None else calibration.summary()
    return Outcome(snapshot, signals, perf, decided, reason, summary)


def calibrated_window(rows: int, *, window_size: int, min_window: int) -> int:
    """The window length a check of ``rows`` predictions is calibrated at: the largest of window_size,
    window_size·0.8, window_size·0.8², … (down to min_window) not above it — a shorter calibration is wider,
    so a window between two steps stays under its rate."""
    size = float(window_size)
    while size > rows and size * 0.8 >= min_window:
        size *= 0.8
    return max(min_window, min(int(size), rows))


def calibration_for(settings: Settings, champion: ModelVersion, reference: Reference, rows: int) -> Calibration:
    """The champion's calibration for a window of ``rows``: read from beside its cached reference, or drawn
    from the reference now and stored there (a changed reference or drift setting starts the file afresh)."""
    d = settings.drift
    size = calibrated_window(rows, window_size=d.window_size, min_window=d.min_window)
    path = cache_file(settings, champion.version, ".calibration.json")
    key = {"version": VERSION, "reference": reference.digest, "false_alarm_rate": d.false_alarm_rate,
           "draws": d.calibration_draws, "window_size": d.window_size, "min_window": d.min_window}
    try:
        stored = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):  # unreadable: draw it again
        stored = {}
    if stored.get("key") != key:
        stored = {"key": key, "windows": {}}
    if str(size) not in stored["windows"]:
        calibration = calibrate(reference.features, window=size, false_alarm_rate=d.false_alarm_rate,
                                draws=d.calibration_draws)
        log.info("calibrated %s's drift signals for %s-row windows in %.1f s (%d null splits of %d + %d rows; "
                 "cutoff p ≤ %.2g)", champion.version, size, calibration.seconds, calibration.draws,
                 calibration.window, calibration.reference, calibration.cutoff)
        stored["windows"][str(size)] = calibration.as_json()
        _write_aside(path, lambda scratch: scratch.write_text(json.dumps(stored)))
    return Calibration.from_json(stored["windows"][str(size)])


def run_check(settings: Settings, engine: Engine) -> DriftCheck:
    """Check the current window now; store the row and the HTML report; return the row."""
    start = time.perf_counter()
    d = settings.drift
    with session_scope(engine) as session:
        champion = registry.get_champion(session)
        if champion is None:
            raise NoChampionError()
        started = db_now(session)  # the row's time: compared with promotions, stamped by the same clock
        # Only labels that measure (serving.feedback_measure_sources) count, in the window and in the estimate's
        # history: corrections of wrong answers would read as a fall in accuracy, and set the threshold by mistakes.
        measures = settings.serving.feedback_measure_sources
        window = load_window(session, size=d.window_size, minutes=d.window_minutes, sources=measures)
        history = predictions_with_labels(session, model_version=champion.version,
                                          before=window["created_at"].min(), latest=ESTIMATE_HISTORY_ROWS,
                                          content=False, sources=measures) \
            if len(window) >= d.min_window else None
    row = DriftCheck(model_version=champion.version, created_at=started, window_size=len(window), verdict="insufficient_data",
                     window_start=window["created_at"].min() if len(window) else None,
                     window_end=window["created_at"].max() if len(window) else None)
    if len(window) < d.min_window:
        row.verdict, row.reason = verdict([], window=len(window), min_window=d.min_window)
    else:
        reference = Reference.prepare(*reference_for(settings, champion, engine))
        calibration = calibration_for(settings, champion, reference, len(window)) if d.calibrated else None
        outcome = compute(settings, champion, reference, *champion_view(settings, champion, window), calibration,
                          history)
        with session_scope(engine) as session:
            row.verdict, row.reason, held = settle(session, outcome.verdict, outcome.reason, needs=d.consecutive)
        row.signals = outcome.signal_rows() | {"_verdict": held,
                                               "_reference": reference_provenance(settings, champion.version)}
        report.save(settings, row, outcome.snapshot)  # sets report_path and signals["_report"]
    row.duration_s = round(time.perf_counter() - start, 2)
    alert = False
    with session_scope(engine) as session:
        alerts.serialize(session)  # no other check's row lands between this read of the last verdict and this row
        previous = last_verdict(session)
        session.add(row)
        session.flush()
        session.refresh(row)
        if d.webhook_url and row.verdict != "insufficient_data" and row.verdict != previous:
            alert = True  # stored with the check: the page goes out even if this process or the receiver dies
            alerts.enqueue(session, kind="drift", subject=str(row.id), payload=drift_payload(row, previous))
    log.info("drift check %s: %s — %s", row.id, row.verdict, row.reason)
    if row.report_path:
        try:
            report.prune(settings, engine)
        except Exception:  # noqa: BLE001 - housekeeping: the check and its report are written
            log.exception("could not prune old drift reports")
    if alert:
        Sender(settings, engine).send_soon()
    return row
