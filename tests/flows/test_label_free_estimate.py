"""The calibration a refit stores makes mean confidence an honest estimate of accuracy."""

from __future__ import annotations

import pandas as pd
import pytest

from refitd.core.artifacts import ArtifactMeta, ArtifactStore
from refitd.core.datasets import load_configured
from refitd.core.tables import ModelVersion
from refitd.daemon.drift.performance import performance
from refitd.serving.runtime import OnnxClassifier

WINDOW = 400
SHIFTED_WINDOW = 200  # enough to see a fall of 0.3 in accuracy; keeps the added inference to ~1 s
# Absolute accuracy points. Measured accuracy on 400 rows at ~0.7 has a standard error of
# sqrt(0.7 * 0.3 / 400) ≈ 0.023, and the temperature is fitted on only 200 validation rows (the flow
# stores ece_after ≈ 0.04 for this champion, and |mean confidence - accuracy| ≤ ECE), so 0.08 is that
# calibration error plus ~2 standard errors. Seen: errors of 0.00-0.05 over several window draws.
TOLERANCE = 0.08
# Confidence varies with a standard deviation of ~0.22, so the difference of the two windows' means
# has a standard error of ~0.02: a fall of more than 0.05 is the estimate moving, not noise
# (seen: 0.10-0.17 on shifted windows, where measured accuracy fell 0.23-0.45).
ESTIMATE_FALL = 0.05


def champion(frozen_accuracy: float | None) -> ModelVersion:
    """A champion row (not stored) whose frozen test accuracy, the performance signal's baseline, is given."""
    frozen = {} if frozen_accuracy is None else {"accuracy": frozen_accuracy}
    return ModelVersion(version="v1", metrics={"candidate": {"frozen": frozen, "recent": {"n": 0}}})


def test_estimate_tracks_measured_accuracy_on_clean_and_shifted_windows(champion_home) -> None:
    folder = ArtifactStore(champion_home / "models").path("v1")
    runtime = OnnxClassifier("v1", folder, provider="cpu")
    runtime.load()
    assert runtime.temperature != 1.0  # the flow fitted one
    # The whole corpus once; splits are a function of the text alone, so the airline rows' splits are the
    # ones the champion was trained with (topics=["airline"]), and "stream" rows were never trained on.
    data = load_configured(data=None, text_column="text", label_column="label", topics=[],
                           validation_fraction=0.1, test_fraction=0.15)
    stream = data[data["split"] == "stream"]
    clean = stream[stream["topic"] == "airline"].sample(WINDOW, random_state=3)
    shifted = stream[stream["topic"] != "airline"].sample(SHIFTED_WINDOW, random_state=3)  # topics it never saw

    def window(rows: pd.DataFrame) -> pd.DataFrame:
        out = runtime.predict(rows["text"].tolist())
        return pd.DataFrame({"label": out.labels, "confidence": out.scores.max(axis=1),
                             "true_label": rows["label"].to_numpy()})

    clean_perf, _ = performance(window(clean), champion(None), min_labels=30)
    est, measured = clean_perf["estimated_accuracy"], clean_perf["measured_accuracy"]
    print(f"clean: label-free estimate {est:.3f} vs measured {measured:.3f}")
    assert clean_perf["labelled"] == WINDOW and clean_perf["estimate_error"] == pytest.approx(est - measured)
    assert abs(est - measured) <= TOLERANCE, clean_perf

    shift_perf, shift_signal = performance(window(shifted), champion(measured), min_labels=30, max_drop=0.05)
    shift_est, shift_measured = shift_perf["estimated_accuracy"], shift_perf["measured_accuracy"]
    print(f"shifted: label-free estimate {shift_est:.3f} vs measured {shift_measured:.3f}")
    assert shift_measured < measured - 0.15, shift_perf  # the shift really costs accuracy
    assert shift_est < est - ESTIMATE_FALL, (clean_perf, shift_perf)  # and the estimate falls with it
    # With labels, the measured fall against the champion's accuracy is a drifted performance signal.
    assert shift_signal is not None and shift_signal.drifted
    assert shift_signal.score == pytest.approx(measured - shift_measured)
    # The refit stored an ATC threshold with the temperature: on the shifted window the share above it
    # is nearer the measured accuracy than mean confidence (seen: 0.08-0.12 nearer in the default demo).
    calibration = ArtifactMeta.read(folder).calibration.model_dump()
    atc_champion = champion(measured)
    atc_champion.metrics["calibration"] = calibration
    atc_perf, _ = performance(window(shifted), atc_champion, min_labels=30)
    print(f"shifted: ATC estimate {atc_perf['estimated_accuracy']:.3f} (threshold {calibration['atc_threshold']:.3f})")
    assert "ATC" in atc_perf["estimate_method"]
    assert abs(atc_perf["estimate_error"]) < abs(shift_perf["estimate_error"]), (atc_perf, shift_perf)
