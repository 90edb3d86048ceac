"""Prefect tasks shared by the training flows: each one typed step."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from core.artifacts import META, ArtifactStore
from core.datasets import digest_frame, load_configured, stratified_sample
from core.settings import Settings
from flows.evaluate import majority_baseline, onnx_logits, report_from_logits
from flows.export import check_parity, export_onnx
from flows.finetune import FitConfig, FitResult, fit, load_model, predict_torch

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
HF_DIR = "hf"


@dataclass
class Snapshot:
    """Exactly the rows one training run used, with their digest and counts."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    labels: list[str]
    digest: str
    counts: dict[str, Any]


@task(cache_policy=NONE)
def prepare_data(settings: Settings, *, max_train_rows: int | None, max_test_rows: int | None) -> Snapshot:
    """Load the configured data, split it deterministically and sample the training rows."""
    t = settings.training
    frame = load_configured(
        data=t.data,
        text_column=t.text_column,
        label_column=t.label_column,
        topics=t.topics,
        validation_fraction=t.validation_fraction,
        test_fraction=t.test_fraction,
    )
    labels = sorted(frame["label"].unique().tolist())
    train = stratified_sample(frame[frame["split"] == "train"], max_train_rows, seed=t.seed)
    validation = stratified_sample(
        frame[frame["split"] == "validation"], None if max_train_rows is None else max(200, max_train_rows // 3), seed=t.seed
    )
    test = stratified_sample(frame[frame["split"] == "test"], max_test_rows, seed=t.seed)
    counts = {
        name: {"rows": len(part), "labels": part["label"].value_counts().to_dict()}
        for name, part in (("train", train), ("validation", validation), ("test", test))
    }
    log.info("data: %d train, %d validation, %d test rows; labels %s", len(train), len(validation), len(test), labels)
    return Snapshot(train, validation, test, labels, digest_frame(pd.concat([train, validation])), counts)


@task(cache_policy=NONE)
def score_base_model(source: Path, snapshot: Snapshot, *, max_length: int) -> dict[str, Any]:
    """Score the untuned model (pre-trained encoder, fresh head) on the test set: the 'before' column."""
    model, tokenizer = load_model(source, snapshot.labels, dropout=None)
    logits = predict_torch(model, tokenizer, snapshot.test["text"].tolist(), max_length=max_length)
    return report_from_logits(logits, snapshot.test["label"].tolist(), snapshot.labels)


@task(cache_policy=NONE)
def fine_tune(source: Path, snapshot: Snapshot, config: FitConfig) -> FitResult:
    """Fine-tune the model in ``source`` on the snapshot's training rows."""
    return fit(source, snapshot.train, snapshot.validation, config)


@task(cache_policy=NONE)
def export_model(fitted: FitResult, store: ArtifactStore, *, max_length: int) -> Path:
    """Export ONNX, tokenizer and the Hugging Face checkpoint into a staging folder."""
    staged = store.staging("candidate")
    export_onnx(fitted.model, fitted.tokenizer, staged / MODEL_FILE, max_length=max_length)
    fitted.tokenizer.backend_tokenizer.save(str(staged / TOKENIZER_FILE))
    fitted.model.save_pretrained(staged / HF_DIR)
    fitted.tokenizer.save_pretrained(staged / HF_DIR)
    return staged


@task(cache_policy=NONE)
def check_export(fitted: FitResult, staged: Path, texts: list[str], *, max_length: int, tolerance: float) -> float:
    """Fail the run unless ONNX Runtime reproduces the torch logits."""
    return check_parity(
        fitted.model, staged / MODEL_FILE, staged / TOKENIZER_FILE, texts, max_length=max_length, tolerance=tolerance
    )


@task(cache_policy=NONE)
def evaluate_export(staged: Path, snapshot: Snapshot, *, max_length: int) -> dict[str, Any]:
    """Score the exported ONNX model (what will be served) and the majority baseline on the test set."""
    texts, truth = snapshot.test["text"].tolist(), snapshot.test["label"].tolist()
    logits = onnx_logits(staged / MODEL_FILE, staged / TOKENIZER_FILE, texts, max_length=max_length)
    return {
        "test": report_from_logits(logits, truth, snapshot.labels),
        "majority_baseline": majority_baseline(snapshot.train["label"].tolist(), truth, snapshot.labels),
    }


@task(cache_policy=NONE)
def write_metadata(
    staged: Path, snapshot: Snapshot, config: FitConfig, fitted: FitResult, metrics: dict[str, Any], lineage: dict[str, Any]
) -> None:
    """Store what a runtime needs, plus config, metrics and data lineage beside the weights."""
    meta = {
        "format": 1,
        "labels": snapshot.labels,
        "max_length": config.max_length,
        "model_file": MODEL_FILE,
        "tokenizer_file": TOKENIZER_FILE,
        "outputs": ["logits", "embedding"],
        "embedding_dim": int(fitted.model.config.hidden_size),
        "calibration": {"temperature": 1.0},
    }
    (staged / META).write_text(json.dumps(meta, indent=2))
    (staged / "config.json").write_text(json.dumps(asdict(config), indent=2, default=str))
    (staged / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (staged / "lineage.json").write_text(
        json.dumps({**lineage, "data_digest": snapshot.digest, "data_counts": snapshot.counts}, indent=2, default=str)
    )
    (staged / "train_history.json").write_text(json.dumps(fitted.history, indent=2, default=str))


def discard(staged: Path | None) -> None:
    if staged is not None and staged.exists():
        shutil.rmtree(staged, ignore_errors=True)
