"""Prefect tasks of the training flow: each one typed step with a one-line docstring."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NONE

from refitd.core.artifacts import (CONFIG_FILE, FROZEN_LOGITS_FILE, HF_DIR, HISTORY_FILE, INT8_FILE, LINEAGE_FILE,
                                   METRICS_FILE, MODEL_FILE, OUTPUTS, TOKENIZER_FILE, TRAIN_ROWS_FILE, ArtifactMeta,
                                   ArtifactStore)
from refitd.core import reference as refdata
from refitd.core import registry
from refitd.core.datasets import text_digest
from refitd.core.db import engine_for, session_scope
from refitd.core.labels import labelled_rows
from refitd.core.registration import register_candidate as register
from refitd.core.sections import GateSection
from refitd.core.settings import Settings
from refitd.core.tables import ModelVersion
from refitd.flows import snapshot as snap
from refitd.flows import quantize
from refitd.flows.gate import choose_int8, paired_bootstrap
from refitd.flows.augment import augment_frame
from refitd.flows.calibrate import fit_temperature
from refitd.flows.evaluate import majority_baseline, onnx_logits, report_from_logits
from refitd.flows.ensemble import fit_ensemble
from refitd.flows.export import check_parity, export_onnx
from refitd.flows.finetune import FitConfig, FitResult, fit, load_model, predict_torch
from refitd.flows.hpo import search

log = logging.getLogger(__name__)


@task(cache_policy=NONE, retries=2, retry_delay_seconds=5)
def snapshot_data(settings: Settings, champion: ModelVersion | None) -> snap.Snapshot:
    """Reference data + production labels since the champion was trained + replay, deduplicated."""
    t = settings.training
    reference, described = refdata.load_with_info(settings)
    with session_scope(engine_for(settings)) as session:
        production = labelled_rows(session)
    snapshot = snap.build(reference, production, since=registry.labels_until(champion) if champion else None,
                          validation_fraction=t.validation_fraction, test_fraction=t.test_fraction,
                          recent_fraction=t.recent_test_fraction, replay_ratio=t.replay_ratio,
                          max_train_rows=t.max_train_rows, max_test_rows=t.max_test_rows,
                          min_reference_share=t.min_reference_share, seed=t.seed,
                          measuring=settings.serving.feedback_measure_sources)
    snapshot.reference_digest = described.digest if described is not None else None
    return snapshot


@task(cache_policy=NONE)
def validate_data(snapshot: snap.Snapshot, *, min_rows: int, min_class_share: float) -> None:
    """Fail the run with a reason a human can act on when the data cannot make a good model."""
    snap.validate(snapshot, min_rows=min_rows, min_class_share=min_class_share)


@task(cache_policy=NONE)
def score_base_model(source: Path, snapshot: snap.Snapshot, *, max_length: int) -> dict[str, Any]:
    """Score the untuned model (pre-trained encoder, fresh head) on the frozen test set."""
    model, tokenizer = load_model(source, snapshot.labels, dropout=None)
    logits = predict_torch(model, tokenizer, snapshot.test["text"].tolist(), max_length=max_length)
    return report_from_logits(logits, snapshot.test["label"].tolist(), snapshot.labels)


@task(cache_policy=NONE)
def fine_tune(source: Path, snapshot: snap.Snapshot, config: FitConfig, settings: Settings, *,
              trials: int, shuffle_labels: bool) -> tuple[FitResult, dict[str, Any] | None]:
    """Fine-tune (after an optional hyperparameter search); return the model and the search record."""
    train = snapshot.train
    if shuffle_labels:  # a gate drill: a model that learnt nothing must be rejected
        train = train.assign(label=random.Random(config.training.seed).sample(list(train["label"]), len(train)))
    if settings.training.augment:
        held_out = [*snapshot.validation["text"], *snapshot.test["text"], *snapshot.recent_test["text"]]
        train = augment_frame(train, copies=settings.training.augment_copies, seed=config.training.seed,
                              exclude=held_out)
    if settings.training.ensemble > 1:
        return fit_ensemble(source, train, snapshot.validation, config, min_delta=settings.gate.ensemble_min_delta,
                            search_trials=trials), None
    if trials > 0:
        hpo = settings.hpo.model_copy(update={"trials": trials})
        return search(source, train, snapshot.validation, config, hpo)
    return fit(source, train, snapshot.validation, config), None


@task(cache_policy=NONE)
def export_model(fitted: FitResult, store: ArtifactStore) -> Path:
    """Export fp32 ONNX, the tokenizer and the Hugging Face checkpoint into a staging folder."""
    staged = store.staging("candidate")
    export_onnx(fitted.model, fitted.tokenizer, staged / MODEL_FILE)
    fitted.tokenizer.backend_tokenizer.save(str(staged / TOKENIZER_FILE))
    fitted.model.save_pretrained(staged / HF_DIR)
    fitted.tokenizer.save_pretrained(staged / HF_DIR)
    return staged


@task(cache_policy=NONE)
def check_export(fitted: FitResult, staged: Path, texts: list[str], *, max_length: int, tolerance: float) -> float:
    """Fail the run unless ONNX Runtime reproduces the torch logits."""
    return check_parity(fitted.model, staged / MODEL_FILE, staged / TOKENIZER_FILE, texts,
                        max_length=max_length, tolerance=tolerance)


@task(cache_policy=NONE)
def validation_logits(staged: Path, snapshot: snap.Snapshot, *, max_length: int) -> np.ndarray:
    """Score the fp32 candidate on the validation set once: the INT8 choice and temperature scaling both read it."""
    return onnx_logits(staged / MODEL_FILE, staged / TOKENIZER_FILE, snapshot.validation["text"].tolist(),
                       max_length=max_length)


@task(cache_policy=NONE)
def quantize_int8(staged: Path, snapshot: snap.Snapshot, gate: GateSection, *, max_length: int, threads: int | None,
                  seed: int, fp32_logits: np.ndarray | None = None, spin: str = "off") -> dict[str, Any]:
    """Build the INT8 variants; keep the fastest within ``gate.int8_tolerance`` of fp32 on validation."""
    if not gate.int8_variants:
        return {"chosen": None, "file": None, "reason": "no INT8 variants configured (gate.int8_variants = [])"}
    calibration = snapshot.train.sample(n=min(gate.int8_calibration_rows, len(snapshot.train)), random_state=seed)
    labels = snapshot.validation["label"].map(snapshot.labels.index).tolist()
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=staged) as scratch:
        measured = quantize.measure(staged / MODEL_FILE, staged / TOKENIZER_FILE, Path(scratch),
                                    recipes=gate.int8_variants, calibration_texts=calibration["text"].tolist(),
                                    validation_texts=snapshot.validation["text"].tolist(), validation_labels=labels,
                                    max_length=max_length, threads=threads, tolerance=gate.int8_tolerance,
                                    fp32_logits=fp32_logits, spin=spin)
        fp32 = measured.pop("fp32")
        skipped = {name: v for name, v in measured.items() if "path" not in v}
        measured = {name: v for name, v in measured.items() if "path" in v}
        chosen, why = choose_int8(fp32, measured, gate.int8_tolerance)
        # Nothing chosen: the most accurate variant is still written, for serving.precision = 'int8' and benchmarks.
        kept = chosen or max(measured, key=lambda n: (measured[n]["accuracy"], measured[n]["speedup"] or 0.0))
        os.replace(measured[kept]["path"], staged / INT8_FILE)
    for name, v in [("fp32", fp32), *measured.items()]:
        v.pop("path")
        if name in why:
            v["verdict"] = why[name]
    measured |= skipped
    reason = (f"INT8 variant {chosen}: {why[chosen]}" if chosen else
              f"no INT8 variant within {gate.int8_tolerance:.4f} of fp32 accuracy on validation and faster "
              f"({'; '.join(f'{n}: {w}' for n, w in why.items())}); {INT8_FILE} holds {kept}, served only if forced")
    log.info("%s", reason)
    return {"chosen": chosen, "file": kept, "reason": reason, "tolerance": gate.int8_tolerance, "threads": threads,
            "calibration_rows": len(calibration), "validation_rows": len(labels), "fp32": fp32, "variants": measured}


def _score(folder: Path, model_file: str, tokenizer_file: str, max_length: int, part, labels) -> tuple[dict, np.ndarray]:
    if not len(part):
        return {"n": 0}, np.zeros((0, len(labels)), dtype=np.float32)
    logits = onnx_logits(folder / model_file, folder / tokenizer_file, part["text"].tolist(), max_length=max_length)
    return report_from_logits(logits, part["label"].tolist(), labels), logits


@task(cache_policy=NONE)
def evaluate(staged: Path, champion_dir: Path | None, snapshot: snap.Snapshot, *, max_length: int,
             primary_metric: str = "macro_f1", confidence: float = 0.9) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Candidate (fp32 and INT8) and champion on the same frozen and recent test sets, with a paired
    bootstrap of their difference on each; and the candidate's fp32 logits per set (``frozen``, ``recent``),
    for later steps to read instead of scoring again."""
    labels = snapshot.labels
    out: dict[str, Any] = {"candidate": {}, "champion": None}
    agreement, int8_paired, candidate_logits = {}, {}, {}
    for name, part in (("frozen", snapshot.test), ("recent", snapshot.recent_test)):
        out["candidate"][name], fp32 = _score(staged, MODEL_FILE, TOKENIZER_FILE, max_length, part, labels)
        candidate_logits[name] = fp32
        if not (staged / INT8_FILE).is_file():
            continue
        out["candidate"][f"{name}_int8"], int8 = _score(staged, INT8_FILE, TOKENIZER_FILE, max_length, part, labels)
        if len(part):
            agreement[name] = float((fp32.argmax(1) == int8.argmax(1)).mean())
            # INT8 minus fp32 on the same rows: the gate serves INT8 unless a set shows it beyond the tolerance
            int8_paired[name] = paired_bootstrap(part["label"].tolist(), [labels[i] for i in int8.argmax(1)],
                                                 [labels[i] for i in fp32.argmax(1)], labels, metric="accuracy",
                                                 confidence=confidence)
    out["candidate"]["int8_agreement"] = agreement
    out["candidate"]["int8_paired"] = int8_paired
    out["candidate"]["baseline"] = majority_baseline(snapshot.train["label"].tolist(), snapshot.test["label"].tolist(), labels)
    save_frozen_logits(staged, snapshot, candidate_logits["frozen"])
    if champion_dir is not None:
        meta = ArtifactMeta.read(champion_dir)
        out["champion"], out["paired"], out["champion_reused"] = {}, {}, []
        for name, part in (("frozen", snapshot.test), ("recent", snapshot.recent_test)):
            cached = load_frozen_logits(champion_dir, snapshot, list(meta.labels)) if name == "frozen" else None
            if cached is not None:  # scored on exactly these rows when it was the candidate: no second pass
                out["champion"][name] = report_from_logits(cached, part["label"].tolist(), list(meta.labels))
                champ_logits = cached
                out["champion_reused"].append(name)
            else:
                out["champion"][name], champ_logits = _score(champion_dir, meta.model_file, meta.tokenizer_file,
                                                             meta.max_length, part, list(meta.labels))
            if len(part):  # the same rows, both models' predictions: the gate reads the difference's interval
                cand_pred = [labels[i] for i in candidate_logits[name].argmax(1)]
                champ_pred = [meta.labels[i] for i in champ_logits.argmax(1)]
                out["paired"][name] = paired_bootstrap(part["label"].tolist(), cand_pred, champ_pred, labels,
                                                       metric=primary_metric, confidence=confidence)
    return out, candidate_logits


def save_frozen_logits(staged: Path, snapshot: snap.Snapshot, logits: np.ndarray) -> None:
    """Keep the candidate's fp32 logits on the frozen set beside its files (and so in its manifest), keyed
    by the set's digest and each row's text digest: when it is the champion, a refit on the same frozen set
    reads them instead of scoring it again, row by row whatever order the set now comes in."""
    np.savez(staged / FROZEN_LOGITS_FILE, logits=logits.astype(np.float32), digest=np.array(snapshot.frozen_digest),
             labels=np.array(snapshot.labels), rows=np.array([text_digest(t) for t in snapshot.test["text"]]))


def load_frozen_logits(folder: Path, snapshot: snap.Snapshot, labels: list[str]) -> np.ndarray | None:
    """The version's stored frozen-set logits in this snapshot's row order, when they were computed on this very
    set with these labels (the set's digest ignores order: another ``training.seed`` draws the same rows in
    another order, and logits read in stored order would be another row's)."""
    path = folder / FROZEN_LOGITS_FILE
    if not path.is_file() or not snapshot.frozen_digest:
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["digest"]) != snapshot.frozen_digest or f["labels"].tolist() != labels or "rows" not in f:
                return None
            logits, rows = f["logits"], f["rows"].tolist()
    except (OSError, KeyError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return None
    where = {digest: i for i, digest in enumerate(rows)}
    order = [where.get(text_digest(t)) for t in snapshot.test["text"]]
    if logits.shape != (len(rows), len(labels)) or None in order:
        return None
    return logits[order]


@task(cache_policy=NONE)
def calibrate(logits: np.ndarray, snapshot: snap.Snapshot,
              recent_logits: np.ndarray | None = None) -> dict[str, float | str]:
    """Fit temperature scaling on the validation logits, and the ATC threshold the drift watch's label-free
    estimate counts confidences above. The threshold is set on the recent test set — new production traffic
    the refit neither trained on nor chose anything by, the traffic its drift reference is drawn from — when
    it is large enough, else on validation."""
    index = {label: i for i, label in enumerate(snapshot.labels)}
    y = np.asarray([index[x] for x in snapshot.validation["label"]])
    target = None
    if recent_logits is not None and len(recent_logits) == len(snapshot.recent_test):
        target = (recent_logits, np.asarray([index[x] for x in snapshot.recent_test["label"]], dtype=int))
    return fit_temperature(logits, y, target=target, target_name="the recent test set")


@task(cache_policy=NONE)
def trial_load(staged: Path) -> dict[str, Any]:
    """Load the candidate in a fresh ONNX Runtime session in a separate process, as the server would."""
    proc = subprocess.run([sys.executable, "-m", "refitd.serving.trial_load", str(staged)], capture_output=True, text=True,
                          timeout=300)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        result = {"ok": False, "reason": f"trial load crashed (exit {proc.returncode}): {proc.stderr[-500:]}"}
    return result


@task(cache_policy=NONE)
def write_runtime_meta(staged: Path, snapshot: snap.Snapshot, config: FitConfig, fitted: FitResult, *,
                       calibration: dict[str, float], serve_int8: bool) -> None:
    """Write what a runtime needs to serve the candidate: labels, files, max_length, calibration."""
    int8_file = INT8_FILE if (staged / INT8_FILE).is_file() else None
    ArtifactMeta(labels=snapshot.labels, max_length=config.max_length, model_file=MODEL_FILE, int8_file=int8_file,
                 serve_file=int8_file if serve_int8 and int8_file else MODEL_FILE, tokenizer_file=TOKENIZER_FILE,
                 outputs=OUTPUTS,
                 embedding_dim=int(fitted.model.config.hidden_size), calibration=calibration).write(staged)


@task(cache_policy=NONE)
def write_record(staged: Path, snapshot: snap.Snapshot, config: FitConfig, fitted: FitResult, *,
                 metrics: dict[str, Any], lineage: dict[str, Any]) -> None:
    """Store config, metrics, lineage and the exact training rows beside the weights."""
    (staged / CONFIG_FILE).write_text(json.dumps(config.record(), indent=2, default=str))
    (staged / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    (staged / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2, default=str))
    (staged / HISTORY_FILE).write_text(json.dumps(fitted.history, indent=2, default=str))
    snapshot.train.to_parquet(staged / TRAIN_ROWS_FILE)  # exactly what was trained on (the digest's input)


@task(cache_policy=NONE)
def register_candidate(settings: Settings, staged: Path, fields: dict[str, Any]) -> str:
    """Publish the sealed artifact and insert its candidate row under the next version name, in one step."""
    return register(engine_for(settings), ArtifactStore.from_settings(settings), staged, **fields).version


def discard(staged: Path | None) -> None:
    if staged is not None and staged.exists():
        shutil.rmtree(staged, ignore_errors=True)
