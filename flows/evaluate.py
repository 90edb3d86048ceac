"""Scoring an exported model on held-out data, with the metrics a practitioner reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from refitd.core.encoding import encode, load_tokenizer


def onnx_logits(
    onnx_path: Path, tokenizer_json: Path, texts: list[str], *, max_length: int, batch_size: int = 64
) -> np.ndarray:
    """Class logits from ONNX Runtime, batched by similar length (as the server batches)."""
    tok = load_tokenizer(tokenizer_json, max_length=max_length)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
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
