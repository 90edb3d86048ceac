"""The calibration a refit stores makes mean confidence an honest estimate of accuracy."""

from __future__ import annotations

import numpy as np
import pandas as pd

from refitd.core.artifacts import ArtifactStore
from refitd.core.datasets import load_configured
from refitd.daemon.drift.check import performance
from refitd.serving.runtime import OnnxClassifier

TOLERANCE = 0.08  # absolute accuracy points, on a 400-row window the model never saw


def test_estimate_tracks_measured_accuracy_on_held_out_window(champion_home) -> None:
    folder = ArtifactStore(champion_home / "models").path("v1")
    runtime = OnnxClassifier("v1", folder, provider="cpu")
    runtime.load()
    assert runtime.temperature != 1.0  # the flow fitted one
    data = load_configured(data=None, text_column="text", label_column="label", topics=["airline"],
                           validation_fraction=0.1, test_fraction=0.15)
    held_out = data[data["split"] == "stream"].sample(400, random_state=3)
    out = runtime.predict(held_out["text"].tolist())
    window = pd.DataFrame({"label": out.labels, "confidence": out.scores.max(axis=1),
                           "true_label": held_out["label"].to_numpy()})

    class Champion:
        metrics = {"test": {"accuracy": 0.0}}

    perf, _ = performance(window, Champion(), min_labels=30)
    print(f"label-free estimate {perf['estimated_accuracy']:.3f} vs measured {perf['measured_accuracy']:.3f}")
    assert abs(perf["estimated_accuracy"] - perf["measured_accuracy"]) <= TOLERANCE, perf
    assert np.isfinite(perf["estimate_error"])
