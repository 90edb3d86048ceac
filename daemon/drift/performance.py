"""Measured performance in a drift check: live accuracy on the labelled rows of the champion's own answers,
tested against its held-out accuracy, beside the label-free estimate (ATC) and that estimate's own error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binom, norm

from refitd.core import registry
from refitd.core.estimate import ATC_MIN_ROWS, atc_threshold
from refitd.core.tables import ModelVersion
from refitd.daemon.drift.signals import Signal


def performance(window: pd.DataFrame, champion: ModelVersion, *, min_labels: int = 30,
                max_drop: float = 0.05, alpha: float = 0.01,
                history: pd.DataFrame | None = None) -> tuple[dict[str, Any], Signal | None]:
    """Measured accuracy on the labelled rows beside the label-free estimate (:func:`label_free_estimate`, set
    again on ``history``, the champion's labelled answers served before the window, when there are enough).

    Only the champion's own answers count (rows of ``model_version`` another version are its predecessor's
    answers; the champion's answers to them, computed at the check, may be to rows it was trained on).
    The signal drifts when the fall is both large (``max_drop`` or more below the champion's held-out
    accuracy) and real: a one-sided test that live accuracy is below the held-out one gives p ≤ ``alpha``
    (two proportions when the held-out set's size is known, so its own noise counts; else binomial)."""
    own = window[window["model_version"] == champion.version] if "model_version" in window else window
    labelled = own[own["true_label"].notna()]
    estimated, method = label_free_estimate(champion, history)
    estimate = estimated(window["confidence"]) if len(window) else None
    out: dict[str, Any] = {"labelled": int(len(labelled)), "estimated_accuracy": estimate, "estimate_method": method}
    if len(labelled) < max(min_labels, 1):
        return out, None
    correct = int((labelled["label"] == labelled["true_label"]).sum())
    measured = correct / len(labelled)
    test_acc, held_out, test_n = held_out_accuracy(champion, default=measured)
    # The estimate's own error, on the same rows: what it would have said of the labelled rows minus what they show.
    on_labelled = estimated(labelled["confidence"])
    out |= {"measured_accuracy": measured, "champion_test_accuracy": test_acc, "champion_test_set": held_out,
            "champion_test_rows": test_n, "estimate_on_labelled": on_labelled, "estimate_error": on_labelled - measured}
    drop = test_acc - measured
    p_value = accuracy_fall_p(correct, len(labelled), test_acc, test_n)
    return out, Signal("performance", f"accuracy drop vs champion {held_out} test", drop, max_drop,
                       drop >= max_drop and p_value <= alpha, p_value=p_value)


def label_free_estimate(champion: ModelVersion,
                        history: pd.DataFrame | None = None) -> tuple[Callable[[pd.Series], float], str]:
    """How a window's calibrated confidences become an accuracy estimate for this champion: the share above an ATC
    threshold (``core/estimate``). Set on ``history`` — the champion's own labelled answers to live traffic
    before the window — when it has :data:`ATC_MIN_ROWS` or more: after a shift, a threshold set on
    held-out rows before it counts the new topics' confident mistakes as right (a default demo's v1 over-estimated
    every window after the shift, by 0.07 on average). Else the threshold the refit stored, else the mean
    confidence (versions trained before the threshold was stored). The window's own labels are never used, so
    the estimate's error on them stays an honest measure."""
    if history is not None and len(history) >= ATC_MIN_ROWS:
        threshold = atc_threshold(history["confidence"].to_numpy(dtype=float),
                                  (history["label"] == history["true_label"]).to_numpy())
        return ((lambda conf: float((conf > threshold).mean())),
                f"share of confidences above {threshold:.3f} (ATC, set on the {len(history)} latest labelled "
                "answers before the window)")
    threshold = registry.atc_threshold(champion)
    if threshold is None:
        return (lambda conf: float(conf.mean())), registry.estimate_method(champion)
    return (lambda conf: float((conf > threshold).mean())), registry.estimate_method(champion)


def accuracy_fall_p(correct: int, n: int, expected: float, expected_n: int | None) -> float:
    """One-sided p-value of live accuracy ``correct / n`` being this far below ``expected`` by chance:
    a pooled two-proportion z-test when ``expected`` was measured on ``expected_n`` rows, else the
    binomial chance of this few right or fewer were accuracy ``expected`` exactly."""
    if not expected_n:
        return float(binom.cdf(correct, n, expected))
    pooled = (correct + expected * expected_n) / (n + expected_n)
    spread = float(np.sqrt(pooled * (1 - pooled) * (1 / n + 1 / expected_n)))
    if spread == 0:
        return 1.0 if correct / n >= expected else 0.0
    return float(norm.cdf((correct / n - expected) / spread))


def held_out_accuracy(champion: ModelVersion, *, default: float, min_rows: int = 100) -> tuple[float, str, int | None]:
    """The accuracy live traffic should show, its set and that set's rows: the recent test set (production
    labels it was not trained on) when the refit had one of ``min_rows`` or more, else the frozen test set."""
    recent = ((champion.metrics or {}).get("candidate") or {}).get("recent") or {}
    if recent.get("n", 0) >= min_rows and "accuracy" in recent:
        return float(recent["accuracy"]), "recent", int(recent["n"])
    frozen = champion.frozen_scores
    return float(frozen.get("accuracy", default)), "frozen", (int(frozen["n"]) if frozen.get("n") else None)
