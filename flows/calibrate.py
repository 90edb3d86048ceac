"""Temperature scaling: one scalar that makes max-probability an honest confidence; and the threshold the
drift watch's label-free accuracy estimate counts confidences above (Average Thresholded Confidence)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from refitd.core import estimate
from refitd.core.encoding import softmax


def _nll(logits: np.ndarray, y: np.ndarray, t: float) -> float:
    p = softmax(logits, t).astype(np.float64)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.mean() * abs((pred[mask] == y[mask]).mean() - conf[mask].mean())
    return float(ece)


def atc_threshold(probs: np.ndarray, y: np.ndarray) -> float:
    """The ATC threshold (``core/estimate``) of class probabilities ``probs`` for true classes ``y``."""
    return estimate.atc_threshold(probs.max(axis=1), probs.argmax(axis=1) == y)


def fit_temperature(logits: np.ndarray, y: np.ndarray, *, target: tuple[np.ndarray, np.ndarray] | None = None,
                    target_name: str = "") -> dict[str, float | str]:
    """Temperature minimising validation NLL, with ECE before and after, and the ATC threshold on the
    calibrated confidences.

    The threshold is set where the model will be watched: on ``target`` (logits and labels of held-out rows
    of the traffic a refit adapted to: its recent test set) when it has at least
    :data:`estimate.ATC_MIN_ROWS` rows, else on validation. A refit's validation set is mostly replayed
    reference rows, on which the model is surer and more often right than on the new traffic it will serve;
    a threshold set there under-estimates its accuracy on that traffic (a default demo's v2: estimates 0.51-0.58
    against 0.70-0.79 measured)."""
    if len(y) < 20:
        return {"temperature": 1.0, "ece_before": float("nan"), "ece_after": float("nan"), "n": int(len(y))}
    res = minimize_scalar(lambda log_t: _nll(logits, y, float(np.exp(log_t))), bounds=(-3, 3), method="bounded")
    t = float(np.exp(res.x))
    calibrated = softmax(logits, t)
    out: dict[str, float | str] = {
        "temperature": t,
        "ece_before": expected_calibration_error(softmax(logits, 1.0), y),
        "ece_after": expected_calibration_error(calibrated, y),
        "atc_threshold": atc_threshold(calibrated, y),
        "atc_set": "validation",
        "atc_rows": int(len(y)),
        "n": int(len(y)),
    }
    if target is not None and len(target[1]) >= estimate.ATC_MIN_ROWS:
        out |= {"atc_threshold": atc_threshold(softmax(target[0], t), target[1]),
                "atc_set": target_name or "target", "atc_rows": int(len(target[1]))}
    return out
