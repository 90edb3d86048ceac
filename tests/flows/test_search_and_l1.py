"""The rest of the toolbox on a model folder that is not the embedded default (a tiny RoBERTa, other
labels): the L1 penalty shrinks the trained weights, and the evolutionary sampler runs a real search."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from refitd.core.datasets import load_bundled_corpus
from refitd.core.sections import HpoSection, TrainingSection
from refitd.flows.finetune import FitConfig, fit, l1_norm
from refitd.flows.hpo import search
from tests.model_factory import tiny_roberta

LABELS = ["airline", "apple"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_roberta(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    corpus = load_bundled_corpus()
    rows = []
    for label, topic in zip(LABELS, ("airline", "apple"), strict=True):
        picked = corpus[corpus["topic"] == topic].head(120)
        rows.append(pd.DataFrame({"text": picked["text"].tolist(), "label": label}))
    frame = pd.concat(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)
    return frame.iloc[:200], frame.iloc[200:]


def _config(**training) -> FitConfig:  # type: ignore[no-untyped-def]
    base = {"epochs": 2.0, "batch_size": 16, "learning_rate": 1e-3, "freeze_layers": 0, "freeze_embeddings": False,
            "weight_decay": 0.0, "threads": 1, "early_stopping_patience": 5}
    return FitConfig(labels=LABELS, training=TrainingSection.model_validate({**base, **training}), max_length=32)


def test_l1_norm_counts_weight_matrices_only() -> None:
    layer = torch.nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.fill_(-0.5)
        layer.bias.fill_(10.0)
    assert float(l1_norm(layer)) == pytest.approx(3.0)


def test_l1_penalty_shrinks_the_trained_weights(model_dir: Path, data) -> None:  # type: ignore[no-untyped-def]
    train, validation = data
    plain = fit(model_dir, train, validation, _config(l1=0.0))
    sparse = fit(model_dir, train, validation, _config(l1=5e-4))
    plain_norm, sparse_norm = float(l1_norm(plain.model)), float(l1_norm(sparse.model))
    assert sparse_norm < 0.97 * plain_norm, (plain_norm, sparse_norm)


def test_l1_is_validated() -> None:
    with pytest.raises(ValueError, match="training.l1 must be in"):
        TrainingSection(l1=-1.0)


def test_evolutionary_search_runs_generations(model_dir: Path, data) -> None:  # type: ignore[no-untyped-def]
    train, validation = data
    hpo = HpoSection(trials=6, sampler="evolutionary", pruner="none", budget_minutes=10, learning_rate=[5e-4, 1e-3],
                     freeze_layers=[0, 1], epochs=[1.0], weight_decay=[0.0], l1=[0.0, 1e-5], dropout=[0.1],
                     batch_size=[16])
    result, record = search(model_dir, train, validation, _config(), hpo)
    assert record["sampler"] == "evolutionary" and record["completed"] == 6
    assert {"learning_rate", "freeze_layers", "l1"} <= set(record["best_params"])
    assert result.best_metric == pytest.approx(record["best_value"])


def test_training_that_leaves_nan_weights_is_a_training_error(model_dir: Path, data) -> None:  # type: ignore[no-untyped-def]
    """Diverged weights are named for what they are (and the learning rate), not found later as an export
    parity failure; the check reads the weights, so a NaN put there mid-training stands in for any cause."""
    from transformers import TrainerCallback

    from refitd.core.errors import TrainingError

    class Poison(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):  # type: ignore[no-untyped-def]
            with torch.no_grad():
                model.classifier.out_proj.weight[0, 0] = float("nan")

    train, validation = data
    with pytest.raises(TrainingError, match=r"training diverged.*learning rate 0\.001"):
        fit(model_dir, train.head(32), validation.head(16), _config(epochs=1.0), callbacks=[Poison()])
