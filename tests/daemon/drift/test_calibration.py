"""Calibrated drift tests: the stated false-alarm rate on clean windows, detection of a shift, the
combined cutoff, the stored calibration and its invalidation, fixed-threshold overrides, settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from refitd.core.errors import RefitdError
from refitd.core.settings import Settings
from refitd.core.tables import ModelVersion
from refitd.daemon.drift import calibration
from refitd.daemon.drift.calibration import SIGNALS, Features, Reference, calibrate, min_p_cutoff, scores
from refitd.daemon.drift.check import calibrated_window, calibration_for, compute

REFERENCE, WINDOW = 600, 200


def _split(pools, seed: int, *, other_share: float = 0.0):  # type: ignore[no-untyped-def]
    """A reference and a window drawn from disjoint airline rows; ``other_share`` of the window off-topic."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pools["airline"].frame))
    n_other = round(WINDOW * other_share)
    reference = Reference.prepare(*pools["airline"].take(order[:REFERENCE]))
    air = pools["airline"].take(order[REFERENCE:REFERENCE + WINDOW - n_other])
    other = pools["other"].take(rng.choice(len(pools["other"].frame), n_other, replace=False))
    window = (pd.concat([air[0], other[0]], ignore_index=True), np.concatenate([air[1], other[1]]))
    return reference, window


def _drifted(reference: Reference, window, cal) -> list[str]:  # type: ignore[no-untyped-def]
    scored = scores(reference.features, reference.featurizer.transform(*window))
    return [name for name in SIGNALS if cal.drifted(name, scored[name])]


@pytest.fixture(scope="module")
def featurized(scored_pools):  # type: ignore[no-untyped-def]
    """One featurizer fitted on 150 airline rows; the features of every other row, airline and off-topic."""
    fit = scored_pools["airline"].take(np.arange(150))
    rest = scored_pools["airline"].take(np.arange(150, len(scored_pools["airline"].frame)))
    featurizer = Reference.prepare(*fit).featurizer
    return featurizer.transform(*rest), featurizer.transform(scored_pools["other"].frame, scored_pools["other"].emb)


# 0.01 needs 1,000 null splits per seed (about 15 s on two idle cores): with the integration tests.
@pytest.mark.parametrize("rate", [pytest.param(0.01, marks=pytest.mark.integration), 0.05])
def test_clean_windows_raise_no_more_false_alarms_than_the_stated_rate(featurized, rate: float) -> None:
    """200 seeds, each its own reference rows, calibration and unseen window of the same traffic."""
    airline, _ = featurized
    seeds, alarms = 200, 0
    for seed in range(seeds):
        order = np.random.default_rng(seed).permutation(len(airline))
        reference, window = airline.take(order[:REFERENCE - 150]), airline.take(order[REFERENCE - 150:][:WINDOW])
        cal = calibrate(reference, window=WINDOW, false_alarm_rate=rate, draws=round(10 / rate), seed=seed)
        scored = scores(reference, window)
        alarms += any(cal.drifted(name, scored[name]) for name in SIGNALS)
    margin = binom.ppf(0.999, seeds, rate)  # a true rate at the stated one exceeds this once in a thousand runs
    assert alarms <= margin, f"{alarms} false alarms in {seeds} clean windows at a stated rate of {rate:.0%}"


def test_a_shifted_window_is_drifted_and_names_its_signals(scored_pools) -> None:
    hits: dict[str, int] = {}
    for seed in range(10):
        reference, window = _split(scored_pools, seed, other_share=0.3)
        cal = calibrate(reference.features, window=WINDOW, false_alarm_rate=0.01, draws=1000, seed=seed)
        drifted = _drifted(reference, window, cal)
        assert drifted, f"seed {seed}: a window 30% off-topic was not drifted"
        for name in drifted:
            hits[name] = hits.get(name, 0) + 1
    assert hits.get("embedding", 0) >= 8 and hits.get("oov_share", 0) >= 8, hits


def test_min_p_cutoff_lies_between_bonferroni_and_the_rate() -> None:
    rng = np.random.default_rng(0)
    independent = {f"s{i}": rng.normal(size=4000) for i in range(5)}
    same = {f"s{i}": independent["s0"] for i in range(5)}
    # Independent signals: about rate / signals each. Identical signals: the whole rate for each.
    assert 0.01 / 5 * 0.95 <= min_p_cutoff(independent, 0.01) <= 0.01 / 5 * 1.3
    assert min_p_cutoff(same, 0.01) == pytest.approx(0.01, abs=0.0005)


def test_threshold_and_p_value_agree(scored_pools) -> None:
    reference, _ = _split(scored_pools, 0)
    cal = calibrate(reference.features, window=WINDOW, false_alarm_rate=0.01, draws=1000)
    for name in SIGNALS:
        t = cal.threshold(name)
        assert not cal.drifted(name, t) and cal.drifted(name, t + 1e-9)
        assert cal.p_value(name, t + 1e-9) <= cal.cutoff < cal.p_value(name, t)
    assert (cal.window, cal.reference) == (WINDOW, len(reference.features) - WINDOW)


def test_scalar_and_label_scores_are_evidentlys(scored_pools, tmp_path: Path) -> None:
    """Where Evidently computes the same statistic, the check's score is the number its report shows."""
    reference, window = _split(scored_pools, 1, other_share=0.2)
    settings = Settings.load(home=tmp_path, drift={"min_window": 100})
    champion = ModelVersion(version="v1", metrics={"candidate": {"frozen": {"accuracy": 0.8}}})
    cal = calibrate(reference.features, window=WINDOW, false_alarm_rate=0.01, draws=1000)
    outcome = compute(settings, champion, reference, window[0].assign(true_label=None), window[1], cal)
    by_name = {s.name: s for s in outcome.signals}
    for name in ("label", "confidence", "length", "oov_share", "non_letter_share"):
        assert by_name[name].score == pytest.approx(by_name[name].evidently_score, rel=1e-6), name
    assert by_name["text"].method == "tfidf_mmd" and 0.0 <= by_name["text"].evidently_score <= 1.0  # Evidently's AUC
    assert all(s.calibrated and s.p_value is not None for s in outcome.signals)
    assert outcome.calibration["cutoff"] == cal.cutoff


def test_a_fixed_threshold_overrides_calibration_for_its_signal(scored_pools, tmp_path: Path) -> None:
    reference, window = _split(scored_pools, 2, other_share=0.3)
    settings = Settings.load(home=tmp_path, drift={"min_window": 100, "thresholds": {"text": 0.99},
                                                   "methods": {"confidence": "ks"}})
    champion = ModelVersion(version="v1", metrics={"candidate": {"frozen": {"accuracy": 0.8}}})
    cal = calibrate(reference.features, window=WINDOW, false_alarm_rate=0.01, draws=1000)
    outcome = compute(settings, champion, reference, window[0].assign(true_label=None), window[1], cal)
    by_name = {s.name: s for s in outcome.signals}
    text, conf = by_name["text"], by_name["confidence"]
    assert (text.method, text.threshold, text.calibrated, text.p_value) == ("abs_text_content_drift", 0.99, False, None)
    assert not text.drifted  # an AUC never passes 0.99 here
    assert (conf.method, conf.threshold, conf.calibrated) == ("ks", 0.05, False) and conf.drifted == (conf.score < 0.05)
    assert by_name["embedding"].calibrated and by_name["embedding"].drifted
    assert outcome.verdict == "drifted" and "fixed" not in outcome.reason.split(";")[0].split("embedding")[1][:20]


def test_calibration_is_stored_beside_the_reference_and_redrawn_when_settings_change(
        scored_pools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference, _ = _split(scored_pools, 3)
    champion = ModelVersion(version="v7")
    settings = Settings.load(home=tmp_path, drift={"window_size": 300, "min_window": 100, "calibration_draws": 1000})
    drawn: list[int] = []

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        drawn.append(kwargs["window"])
        return calibrate(*args, **kwargs)

    monkeypatch.setattr("refitd.daemon.drift.check.calibrate", counting)
    first = calibration_for(settings, champion, reference, 300)
    path = tmp_path / "drift" / "reference-v7.calibration.json"
    assert path.is_file() and drawn == [300]
    assert calibration_for(settings, champion, reference, 300).nulls["text"].tolist() == first.nulls["text"].tolist()
    assert drawn == [300]  # read back, not drawn again
    calibration_for(settings, champion, reference, 250)  # a short time window: calibrated at 240 (300 × 0.8)
    assert drawn == [300, 240] and set(json.loads(path.read_text())["windows"]) == {"300", "240"}
    stricter = Settings.load(home=tmp_path, drift={"window_size": 300, "min_window": 100, "calibration_draws": 2000,
                                                   "false_alarm_rate": 0.005})
    calibration_for(stricter, champion, reference, 300)
    assert drawn == [300, 240, 300] and set(json.loads(path.read_text())["windows"]) == {"300"}
    other_reference, _ = _split(scored_pools, 4)
    calibration_for(stricter, champion, other_reference, 300)
    assert len(drawn) == 4


def test_calibrated_window_steps_down_never_above_the_window() -> None:
    assert calibrated_window(1000, window_size=1000, min_window=200) == 1000
    assert calibrated_window(5000, window_size=1000, min_window=200) == 1000
    assert calibrated_window(900, window_size=1000, min_window=200) == 800
    assert calibrated_window(300, window_size=1000, min_window=200) == 262
    assert calibrated_window(210, window_size=1000, min_window=200) == 209
    assert calibrated_window(205, window_size=1000, min_window=200) == 205  # between the last step and min_window


def test_features_take_and_concat_round_trip(scored_pools) -> None:
    reference, window = _split(scored_pools, 5)
    feats = reference.featurizer.transform(*window)
    parts = Features.concat([feats.take(np.arange(0, 50)), feats.take(np.arange(50, len(feats)))])
    assert scores(reference.features, parts) == scores(reference.features, feats)


def test_drift_settings_are_validated_with_what_to_do() -> None:
    with pytest.raises(RefitdError, match="min_drifted_signals applies only with drift.calibrated = false"):
        Settings.load(drift={"min_drifted_signals": 3})
    assert Settings.load(drift={"calibrated": False, "min_drifted_signals": 3}).drift.min_drifted_signals == 3
    with pytest.raises(RefitdError, match=r"calibration_draws must be ≥ 10 / drift.false_alarm_rate \(2500\)"):
        Settings.load(drift={"false_alarm_rate": 0.004})
    with pytest.raises(RefitdError, match="drift.consecutive must be ≥ 1"):
        Settings.load(drift={"consecutive": 0})
    assert calibration.VERSION >= 1
