"""Bagging (``training.ensemble = K``): K fine-tuned members served as one graph, or the best member alone.

Each member is fine-tuned like a single model (:func:`refitd.flows.finetune.fit`) with seed
``training.seed + i`` on a stratified bootstrap (drawn with replacement) of the training rows, and
early-stops on the same validation set. :class:`MeanOfMembers` combines them into one torch module
that looks to the export path like one classifier: its output's ``logits`` are the members' mean
logits and its last hidden state is the members' mean, so the exported ``embedding`` (mean pooling,
a linear map) is the mean of the members' pooled embeddings. The graph keeps exactly the outputs and
shapes of a single model.

Whether the ensemble is worth serving is decided on the validation set, never the test sets
(:func:`choose`): it must beat its best member's macro-F1 by ``gate.ensemble_min_delta``; otherwise
the best member is the candidate. Either way the usual gate then runs on the candidate.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.utils import resample
from transformers import PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from refitd.core.errors import ConfigError
from refitd.flows.evaluate import report_from_logits
from refitd.flows.finetune import FitConfig, FitResult, fit, predict_torch

log = logging.getLogger(__name__)


class MeanOfMembers(torch.nn.Module):
    """K classifiers with the same labels and tokenizer, answering as one: mean logits, mean last hidden state.

    ``config`` and ``save_pretrained`` are the ``warm_start`` member's: the version's ``hf/`` checkpoint
    (what the next refit starts from) is that one model, not the ensemble.
    """

    def __init__(self, members: list[PreTrainedModel], warm_start: int = 0) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members; got {len(members)}")
        self.members = torch.nn.ModuleList(members)
        self.warm_start = warm_start

    @property
    def config(self) -> Any:
        return self.members[self.warm_start].config

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def save_pretrained(self, path: Path | str) -> None:
        """Write the warm-start member's Hugging Face checkpoint."""
        self.members[self.warm_start].save_pretrained(path)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, output_hidden_states: bool = False,
                **_: Any) -> SequenceClassifierOutput:
        outs = [m(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states)
                for m in self.members]
        logits = torch.stack([o.logits for o in outs]).mean(dim=0)
        hidden = (torch.stack([o.hidden_states[-1] for o in outs]).mean(dim=0),) if output_hidden_states else None
        return SequenceClassifierOutput(logits=logits, hidden_states=hidden)


def bootstrap(train: pd.DataFrame, seed: int) -> pd.DataFrame:
    """As many rows as ``train``, drawn with replacement, each label keeping its share."""
    return resample(train, replace=True, n_samples=len(train), stratify=train["label"],
                    random_state=seed).reset_index(drop=True)


def choose(ensemble_val: float, member_vals: list[float], *, min_delta: float) -> dict[str, Any]:
    """Serve the ensemble only when its validation macro-F1 beats the best member's by ``min_delta``."""
    best = int(np.argmax(member_vals))
    gain = ensemble_val - member_vals[best]
    keep = gain >= min_delta
    reason = (f"ensemble of {len(member_vals)}: {gain:+.3f} over best member on validation "
              f"{'≥' if keep else '<'} {min_delta:.3f}: "
              f"{'serving the ensemble' if keep else f'serving the single member (member {best})'}")
    return {"kept": "ensemble" if keep else "member", "best_member": best, "gain": gain, "reason": reason}


def fit_members(source: Path, train: pd.DataFrame, validation: pd.DataFrame,
                config: FitConfig) -> tuple[list[FitResult], list[dict[str, Any]], list[np.ndarray]]:
    """Fine-tune ``training.ensemble`` members, member i with seed ``training.seed + i`` on its own bootstrap of
    ``train``; return them, their records and their validation logits."""
    k, seed = config.training.ensemble, config.training.seed
    texts, y_val = validation["text"].tolist(), validation["label"].tolist()
    fits, members, val_logits = [], [], []
    for i in range(k):
        sample = bootstrap(train, seed + i)
        log.info("ensemble member %d/%d: seed %d, %d bootstrap rows (%d distinct)", i + 1, k, seed + i, len(sample),
                 sample["text"].nunique())
        fitted = fit(source, sample, validation, config.with_training(seed=seed + i))
        logits = predict_torch(fitted.model, fitted.tokenizer, texts, max_length=config.max_length)
        fits.append(fitted)
        val_logits.append(logits)
        members.append({"seed": seed + i, "rows": len(sample), "distinct_rows": int(sample["text"].nunique()),
                        "val_macro_f1": report_from_logits(logits, y_val, config.labels)["macro_f1"],
                        "train_seconds": round(fitted.train_seconds, 1)})
    return fits, members, val_logits


def fit_ensemble(source: Path, train: pd.DataFrame, validation: pd.DataFrame, config: FitConfig, *,
                 min_delta: float, search_trials: int = 0) -> FitResult:
    """Fine-tune the members; return the ensemble or its best member, whichever :func:`choose` keeps on
    validation, with the record in ``FitResult.ensemble``."""
    k = config.training.ensemble
    if search_trials > 0:
        raise ConfigError(f"training.ensemble = {k} cannot be combined with a hyperparameter search ({search_trials} "
                          "trials): search first, put the best values in [training], then refit with the ensemble")
    fits, members, val_logits = fit_members(source, train, validation, config)
    y_val = validation["label"].tolist()
    ensemble_val = report_from_logits(np.mean(val_logits, axis=0), y_val, config.labels)["macro_f1"]
    decision = choose(ensemble_val, [m["val_macro_f1"] for m in members], min_delta=min_delta)
    best = decision["best_member"]
    log.info("%s", decision["reason"])
    record = {"k": k, "members": members, "ensemble_val": ensemble_val, "best_member_val": members[best]["val_macro_f1"],
              "min_delta": min_delta, **decision}
    seconds = sum(f.train_seconds for f in fits)
    examples = sum(f.examples_per_second * f.train_seconds for f in fits)
    kept = decision["kept"] == "ensemble"
    model = MeanOfMembers([f.model for f in fits], warm_start=best).eval() if kept else fits[best].model
    history = [{**h, "member": i} for i, f in enumerate(fits) for h in f.history]
    return replace(fits[best], model=model, train_seconds=seconds, examples_per_second=examples / max(seconds, 1e-9),
                   best_metric=ensemble_val if kept else members[best]["val_macro_f1"], history=history,
                   ensemble=record)
