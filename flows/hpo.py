"""Hyperparameter search with Optuna: grid, random, TPE or evolutionary (NSGA-II) sampling, Hyperband pruning.

Each trial fine-tunes with one point of the declared space and reports
validation macro-F1 at every evaluation, so Hyperband can stop it early. Every
trial is recorded; the best trial's model is kept, so the search costs no
extra final fit.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import optuna
import pandas as pd
from transformers import TrainerCallback

from refitd.core.sections import HpoSection
from refitd.core.errors import SearchError
from refitd.flows.finetune import FitConfig, FitResult, fit

log = logging.getLogger(__name__)


class _Report(TrainerCallback):
    """Report each evaluation's macro-F1 to the trial; prune it when the pruner says so."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # type: ignore[no-untyped-def]
        if metrics and "eval_macro_f1" in metrics:
            self.trial.report(metrics["eval_macro_f1"], step=state.global_step)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {state.global_step}")


def space(hpo: HpoSection) -> dict[str, list[Any]]:
    return {"learning_rate": hpo.learning_rate, "freeze_layers": hpo.freeze_layers, "epochs": hpo.epochs,
            "weight_decay": hpo.weight_decay, "l1": hpo.l1, "dropout": hpo.dropout, "batch_size": hpo.batch_size}


def _sampler(hpo: HpoSection, seed: int) -> optuna.samplers.BaseSampler:
    if hpo.sampler == "grid":
        return optuna.samplers.GridSampler(space(hpo), seed=seed)
    if hpo.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if hpo.sampler == "evolutionary":
        # A genetic algorithm over the categorical space: generations of `population` trials, uniform
        # crossover and mutation (CMA-ES needs a continuous space, so it would fall back to random here).
        population = max(2, min(8, hpo.trials // 3))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(4, max(1, hpo.trials // 3)))


def search(source, train: pd.DataFrame, validation: pd.DataFrame, base: FitConfig, hpo: HpoSection) -> tuple[FitResult, dict[str, Any]]:
    """Run the search; return the best trial's fitted model and a record of every trial."""
    pruner = optuna.pruners.HyperbandPruner() if hpo.pruner == "hyperband" else optuna.pruners.NopPruner()
    study = optuna.create_study(direction="maximize", sampler=_sampler(hpo, base.training.seed), pruner=pruner)
    grid = space(hpo)
    best: dict[str, Any] = {"value": -1.0, "result": None}
    trials: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        params = {name: trial.suggest_categorical(name, values) for name, values in grid.items()}
        config = base.with_training(**params)
        start = time.perf_counter()
        try:
            result = fit(source, train, validation, config, callbacks=[_Report(trial)])
        finally:
            trials.append({"number": trial.number, "params": params, "seconds": round(time.perf_counter() - start, 1)})
        value = float(result.best_metric or 0.0)
        trials[-1]["value"] = value
        if value > best["value"]:
            best.update(value=value, result=result)
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    study.optimize(objective, n_trials=hpo.trials, timeout=hpo.budget_minutes * 60, catch=())
    states = {t.number: t.state.name.lower() for t in study.trials}
    for t in trials:
        t["state"] = states.get(t["number"], "unknown")
    if best["result"] is None:
        raise SearchError(hpo.budget_minutes)
    record = {"sampler": hpo.sampler, "pruner": hpo.pruner, "trials": trials, "best_params": study.best_params,
              "best_value": study.best_value, "seconds": round(time.perf_counter() - start, 1),
              "completed": sum(t["state"] == "complete" for t in trials),
              "pruned": sum(t["state"] == "pruned" for t in trials)}
    log.info("search: best macro-F1 %.3f with %s (%d trials, %d pruned)", study.best_value, study.best_params,
             len(trials), record["pruned"])
    return best["result"], record
