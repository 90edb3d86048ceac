"""Gate rules: min_delta on recent, max_regression on frozen, first run, INT8 tolerance."""

from __future__ import annotations

import pytest

import numpy as np
from sklearn.metrics import f1_score

from refitd.flows.gate import GateRules, decide, int8_verdict, paired_bootstrap

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


def test_a_recent_set_of_a_few_rows_does_not_decide() -> None:
    """Five recent rows where the models differ on two: a bootstrap bound of +0.2 would promote on two rows.
    Under gate.min_recent_rows the frozen set must show the gain itself."""
    tiny = cand(0.80, 0.90)
    tiny["recent"] = rep(0.90, n=5)
    paired = {"recent": {"n": 5, "delta": 0.4, "lower": 0.2, "upper": 0.6, "confidence": 0.9},
              "frozen": {"n": 100, "delta": 0.0, "lower": -0.01, "upper": 0.01, "confidence": 0.9}}
    v = decide(tiny, champ(0.80, 0.50), RULES, paired=paired)
    assert not v.promote and "the recent test set's 5 rows are under gate.min_recent_rows 30" in v.reason
    assert decide({**tiny, "recent": rep(0.90, n=30)}, champ(0.80, 0.50), RULES, paired=paired).promote


def test_rejects_when_recent_gain_below_min_delta() -> None:
    v = decide(cand(0.80, 0.605), champ(0.80, 0.60), RULES)
    assert not v.promote
    assert v.reason == "rejected: macro_f1 on recent 0.605 vs champion 0.600 (needs +0.010)"


def test_rejects_when_frozen_regresses_too_far() -> None:
    v = decide(cand(0.77, 0.75), champ(0.80, 0.60), RULES)
    assert not v.promote and "may regress more than 0.020" in v.reason and "cannot rule" not in v.reason


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


def _predictions(n: int, champ_wrong: int, fixes: int, breaks: int, labels: list[str], seed: int = 0):
    """True labels and two models' answers: the candidate fixes ``fixes`` of the champion's errors and
    makes ``breaks`` new ones (models that disagree both ways, as real refits do)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(labels, n).tolist()
    order = rng.permutation(n).tolist()
    wrong_champ = set(order[:champ_wrong])
    wrong_cand = set(order[fixes:champ_wrong]) | set(order[champ_wrong : champ_wrong + breaks])

    def answers(wrong: set[int]) -> list[str]:
        return [labels[(labels.index(t) + 1) % len(labels)] if i in wrong else t for i, t in enumerate(y)]

    return y, answers(wrong_cand), answers(wrong_champ)


def test_paired_bootstrap_point_is_the_metric_difference_and_bounds_bracket_it() -> None:
    labels = ["negative", "neutral", "positive"]
    y, a, b = _predictions(400, 120, 60, 20, labels)
    p = paired_bootstrap(y, a, b, labels, metric="macro_f1", confidence=0.9)
    expected = f1_score(y, a, labels=labels, average="macro") - f1_score(y, b, labels=labels, average="macro")
    assert abs(p["delta"] - expected) < 1e-9
    assert p["lower"] < p["delta"] < p["upper"] and p["upper"] - p["lower"] < 0.15
    wider = paired_bootstrap(y, a, b, labels, metric="macro_f1", confidence=0.99)
    assert wider["lower"] < p["lower"] and wider["upper"] > p["upper"]
    same = paired_bootstrap(y, a, a, labels, metric="accuracy")
    assert same["delta"] == same["lower"] == same["upper"] == 0.0


def test_a_point_estimate_that_passes_is_held_when_its_interval_does_not() -> None:
    labels = ["negative", "neutral", "positive"]
    # 60 recent rows: a +0.05 point gain (9 fixed, 6 broken) is well inside the noise
    y, a, b = _predictions(60, 21, 9, 6, labels, seed=1)
    paired = {"recent": paired_bootstrap(y, a, b, labels, metric="macro_f1")}
    point = paired["recent"]["delta"]
    assert point > RULES.min_delta  # the old rule would promote
    candidate, champion = cand(0.80, 0.60 + point), champ(0.80, 0.60)
    assert decide(candidate, champion, RULES).promote
    v = decide(candidate, champion, RULES, paired=paired)
    assert not v.promote and paired["recent"]["lower"] < RULES.min_delta
    assert f"{point:+.3f} [" in v.reason and "n=60" in v.reason
    # the same gain on 3,000 rows is promoted, its interval stated
    y, a, b = _predictions(3000, 1050, 450, 150, labels, seed=2)
    paired = {"recent": paired_bootstrap(y, a, b, labels, metric="macro_f1"),
              "frozen": paired_bootstrap(y[:1000], y[:1000], y[:1000], labels, metric="macro_f1")}
    v = decide(cand(0.80, 0.75), champ(0.80, 0.65), RULES, paired=paired)
    assert v.promote and "at 90%, n=3000" in v.reason


def test_the_frozen_regression_rule_reads_the_interval() -> None:
    labels = ["negative", "neutral", "positive"]
    y, a, b = _predictions(300, 60, 20, 23, labels, seed=3)
    frozen = paired_bootstrap(y, a, b, labels, metric="macro_f1")
    assert frozen["delta"] > -RULES.max_regression > frozen["lower"]  # a small loss that may be a large one
    v = decide(cand(0.79, 0.75), champ(0.80, 0.60), RULES,
               paired={"frozen": frozen, "recent": {"delta": 0.15, "lower": 0.1, "upper": 0.2, "n": 500,
                                                    "confidence": 0.9}})
    assert not v.promote and "may regress more than 0.020" in v.reason
    # the point is within the limit: the reason says the set's size decided, and what would change it
    assert "300 frozen rows cannot rule the regression out at 90%" in v.reason and "training.test_fraction" in v.reason


def test_a_new_label_set_is_judged_as_a_first_model_and_must_not_regress_on_the_classes_both_answer() -> None:
    change = "negative, neutral, positive → mixed, negative, positive"
    # as good as the champion on recent (no +min_delta there), far above the baseline on the new frozen set
    v = decide(cand(0.70, 0.70), champ(0.40, 0.70), RULES, label_change=change)
    assert v.promote and v.reason.startswith(f"promoted: a new label set ({change}): macro_f1 on frozen 0.700 vs "
                                             "majority baseline 0.250")
    assert not decide(cand(0.70, 0.70), champ(0.40, 0.70), RULES).promote  # the usual rules would refuse it
    near_baseline = decide(cand(0.28, 0.70), champ(0.40, 0.70), RULES, label_change=change)
    assert not near_baseline.promote and "needs +0.050, as a first model does" in near_baseline.reason
    worse = decide(cand(0.70, 0.60), champ(0.40, 0.70), RULES, label_change=change)
    assert not worse.promote and "may regress more than 0.020 on the classes both answer" in worse.reason
    no_recent = decide(cand(0.70, None), champ(0.40, None), RULES, label_change=change)
    assert no_recent.promote and "no recent test set large enough" in no_recent.reason
