"""Scoring an exported model on held-out data, with the metrics a practitioner reads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from refitd.core.encoding import encode, load_tokenizer


def scoring_threads() -> int:
    """The threads this process may score with: ``OMP_NUM_THREADS``, which a refit child gets from
    ``refit.threads`` (a process that set none, e.g. a Prefect worker: every core)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else (os.cpu_count() or 1)


def scoring_batch(threads: int) -> int:
    """Texts per ``run`` when scoring a set. On one thread a small MiniLM scores fastest a few texts at a time
    (2-vCPU AMD EPYC, fp32 / INT8 texts/s at batch 1, 4, 32, 64: 106 / 285, 109 / 259, 93 / 223, 86 / 186):
    a bigger batch pads more and has no second thread to fill. With more threads the batch feeds them
    (2 threads: 137 / 233 at batch 1, 147 / 293 at 32)."""
    return 4 if threads <= 1 else 32


def onnx_logits(
    onnx_path: Path, tokenizer_json: Path, texts: list[str], *, max_length: int, batch_size: int | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Class logits from ONNX Runtime, batched by similar length (as the server batches), on ``threads``
    intra-op threads (default: :func:`scoring_threads`) that do not spin between runs: a refit scores beside
    serving and drift checks, and a spinning worker takes a core from them for nothing."""
    threads = threads or scoring_threads()
    batch_size = batch_size or scoring_batch(threads)
    tok = load_tokenizer(tokenizer_json, max_length=max_length)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    order = np.argsort([len(t) for t in texts], kind="stable")
    chunks = [order[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    logits = [session.run(["logits"], encode(tok, [texts[i] for i in idx]))[0] for idx in chunks]
    out = np.empty((len(texts), logits[0].shape[1]), dtype=np.float32)
    for idx, part in zip(chunks, logits, strict=True):
        out[idx] = part  # back to the caller's order
    return out


def classification_report(y_true: list[str], y_pred: list[str], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro precision / recall / F1, per-class scores and the confusion matrix."""
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)) if y_true else 0.0,
        "macro_precision": float(mp),
        "macro_recall": float(mr),
        "macro_f1": float(mf),
        "per_class": {
            lbl: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
            for i, lbl in enumerate(labels)
        },
        "confusion": {"labels": labels, "matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist()},
    }


def report_from_logits(logits: np.ndarray, y_true: list[str], labels: list[str]) -> dict[str, Any]:
    preds = [labels[i] for i in logits.argmax(axis=-1)]
    return classification_report(y_true, preds, labels)


def majority_baseline(train_labels: list[str], y_true: list[str], labels: list[str]) -> dict[str, Any]:
    """What always answering the most frequent training label scores."""
    majority = max(labels, key=train_labels.count)
    return classification_report(y_true, [majority] * len(y_true), labels)
