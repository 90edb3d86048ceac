"""Gate rules: min_delta on recent, max_regression on frozen, first run, INT8 tolerance."""

from __future__ import annotations

import pytest

from refitd.flows.gate import GateRules, decide, int8_verdict

RULES = GateRules(min_delta=0.01, max_regression=0.02, baseline_margin=0.05, int8_tolerance=0.01)


def rep(f1: float, acc: float | None = None, n: int = 100) -> dict:
    return {"n": n, "macro_f1": f1, "accuracy": f1 if acc is None else acc}


def cand(frozen: float, recent: float | None, int8_gap: float = 0.0, baseline: float = 0.25) -> dict:
    out = {"frozen": rep(frozen), "frozen_int8": rep(frozen, frozen - int8_gap), "baseline": rep(baseline)}
    if recent is not None:
        out |= {"recent": rep(recent), "recent_int8": rep(recent, recent - int8_gap)}
    return out


def champ(frozen: float, recent: float | None) -> dict:
    return {"frozen": rep(frozen), "recent": rep(recent) if recent is not None else {"n": 0}}


def test_promotes_when_recent_improves_enough_and_frozen_holds() -> None:
    v = decide(cand(0.80, 0.72), champ(0.81, 0.60), RULES)
    assert v.promote and v.reason.startswith("promoted: macro_f1 on recent 0.720 vs champion 0.600")


def test_rejects_when_recent_gain_below_min_delta() -> None:
    v = decide(cand(0.80, 0.605), champ(0.80, 0.60), RULES)
    assert not v.promote
    assert v.reason == "rejected: macro_f1 on recent 0.605 vs champion 0.600 (needs +0.010)"


def test_rejects_when_frozen_regresses_too_far() -> None:
    v = decide(cand(0.77, 0.75), champ(0.80, 0.60), RULES)
    assert not v.promote and "regresses more than 0.020" in v.reason


def test_regression_exactly_at_the_limit_is_allowed() -> None:
    assert decide(cand(0.78, 0.75), champ(0.80, 0.60), RULES).promote


def test_first_run_must_beat_majority_baseline_by_margin() -> None:
    assert decide(cand(0.31, None, baseline=0.25), None, RULES).promote
    v = decide(cand(0.29, None, baseline=0.25), None, RULES)
    assert not v.promote and "majority baseline 0.250 (needs +0.050; no champion yet)" in v.reason


def test_without_recent_labels_frozen_must_improve() -> None:
    assert not decide(cand(0.805, None), champ(0.80, None), RULES).promote
    assert decide(cand(0.82, None), champ(0.80, None), RULES).promote


@pytest.mark.parametrize(("gap", "served"), [(0.0, True), (0.01, True), (0.02, False)])
def test_int8_served_only_within_tolerance(gap: float, served: bool) -> None:
    ok, reason = int8_verdict(cand(0.80, 0.70, int8_gap=gap), 0.01)
    assert ok is served
    assert reason.startswith("INT8 served" if served else "fp32 served")
