"""The demo's summary of the label-free estimate: its error, its bias, and the part the labels' own noise makes."""

from __future__ import annotations

import math

import pytest

from refitd.demo.summary import estimate_error


def _check(error: float | None, measured: float = 0.6, labelled: int = 150) -> dict:
    perf = {"labelled": labelled} if error is None else {"labelled": labelled, "measured_accuracy": measured,
                                                          "estimate_error": error}
    return {"signals": {"_performance": perf}}


def test_the_estimate_summary_separates_bias_from_the_labels_noise() -> None:
    checks = [_check(0.10), _check(-0.02, measured=0.8, labelled=400), _check(None), {"signals": None}]
    e = estimate_error(checks)
    assert e["checks"] == 2
    assert e["mae"] == pytest.approx(0.06) and e["max"] == pytest.approx(0.10) and e["bias"] == pytest.approx(0.04)
    expected = (math.sqrt(0.24 / 150) + math.sqrt(0.16 / 400)) / 2 * math.sqrt(2 / math.pi)
    assert e["label_noise"] == pytest.approx(expected)
    assert e["estimate_rms"] == pytest.approx(math.sqrt((0.01 + 0.0004) / 2 - (0.24 / 150 + 0.16 / 400) / 2))
    assert estimate_error([])["checks"] == 0 and estimate_error([])["mae"] is None
    exact = estimate_error([_check(0.0)] * 3)  # no error at all: nothing of its own to take out
    assert exact["estimate_rms"] == 0.0 and exact["mae"] == 0.0
