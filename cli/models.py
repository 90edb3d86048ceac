"""``refitd models …``: the registry, for ops."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from refitd.cli.terminal import METRICS, console
from refitd.cli.terminal import fmt as _fmt
from refitd.cli.terminal import settings_from as _settings

models_app = typer.Typer(help="Model versions in the registry.", no_args_is_help=True)


@models_app.command("list")
def models_list(ctx: typer.Context, limit: Annotated[int, typer.Option(help="Most rows.")] = 20) -> None:
    """Versions, newest first, with status and test metrics."""
    from refitd.core import registry
    from refitd.core.db import engine_for, session_scope

    settings = _settings(ctx)
    with session_scope(engine_for(settings)) as session:
        rows = registry.list_versions(session, limit=limit)
    table = Table(title="model versions")
    for col in ("version", "status", "parent", "test acc", "test macro-F1", "created", "reason"):
        table.add_column(col)
    for mv in rows:
        test = mv.frozen_scores
        table.add_row(
            mv.version, mv.status, mv.parent or "-", _fmt(test.get("accuracy")), _fmt(test.get("macro_f1")),
            mv.created_at.strftime("%Y-%m-%d %H:%M"), (mv.gate_reason or "")[:70],
        )
    console.print(table)


@models_app.command("show")
def models_show(ctx: typer.Context, version: Annotated[str, typer.Argument(help="e.g. v3")]) -> None:
    """Lineage, metrics and the gate's reason for one version."""
    from refitd.core import registry
    from refitd.core.db import engine_for, session_scope

    settings = _settings(ctx)
    with session_scope(engine_for(settings)) as session:
        mv = registry.get_version(session, version=version)
    m = mv.metrics
    console.print(f"[bold]{mv.version}[/] {mv.status}; parent {mv.parent or '-'}; created {mv.created_at:%Y-%m-%d %H:%M}"
                  f"; promoted {mv.promoted_at or '-'}")
    console.print(f"gate: {mv.gate_reason or '-'}")
    console.print(f"data digest {mv.data_digest}; counts " + ", ".join(
        f"{k} {v['rows']}" for k, v in (mv.data_counts or {}).items()))
    sources = ((mv.data_counts or {}).get("train") or {}).get("sources") or {}
    if sources:
        console.print("training rows by source: " + ", ".join(f"{k} {v}" for k, v in sorted(sources.items())))
    frozen = m.get("frozen_set") or {}
    console.print(f"frozen test set: digest {frozen.get('digest') or 'not recorded'}, n={frozen.get('n', '-')}")
    params = mv.params or {}
    keys = ("warm_start", "epochs", "learning_rate", "batch_size", "freeze_layers", "weight_decay", "optimizer", "max_length")
    console.print("params: " + ", ".join(f"{k}={params.get(k)}" for k in keys if k in params))
    if params.get("hpo_best"):
        console.print(f"search best: {params['hpo_best']}")
    if m.get("ensemble"):
        e = m["ensemble"]
        seeds = ", ".join(f"seed {x['seed']} {_fmt(x['val_macro_f1'])}" for x in e["members"])
        console.print(f"ensemble: {e['reason']} (validation macro-F1 ensemble {_fmt(e['ensemble_val'])}; "
                      f"members {seeds})")
    for set_name in ("frozen", "recent"):
        rep = (m.get("candidate") or {}).get(set_name) or {}
        if rep.get("n"):
            console.print(f"{set_name} test (n={rep['n']}): " + ", ".join(f"{k} {_fmt(rep.get(k))}" for k in METRICS))
    if m.get("calibration"):
        c = m["calibration"]
        atc = ""
        if c.get("atc_threshold") is not None:
            rows = f" ({c['atc_rows']} rows)" if c.get("atc_rows") else ""
            atc = f"; ATC threshold {c['atc_threshold']:.3f} set on {c.get('atc_set', 'validation')}{rows}"
        console.print(f"calibration: temperature {c['temperature']:.2f} (ECE {c['ece_before']:.3f} → {c['ece_after']:.3f}){atc}")
    shadow = m.get("shadow")
    if shadow is None and mv.status == "shadow":
        from refitd.daemon.shadow import progress

        with session_scope(engine_for(settings)) as session:
            shadow = progress(session, settings)
    if shadow:
        console.print(f"shadow beside {shadow.get('champion') or '-'} for {shadow.get('minutes')} min: "
                      f"{shadow['scored']} live requests scored, agreement {_fmt(shadow['agreement'])}, mean confidence "
                      f"{_fmt(shadow['confidence'])} vs {_fmt(shadow['champion_confidence'])}; live accuracy "
                      f"{_fmt(shadow['accuracy'])} vs {_fmt(shadow['champion_accuracy'])} on {shadow['labelled']} labels")
        console.print(f"shadow verdict: {shadow.get('verdict') or 'in progress'}")
    console.print(f"artifact {mv.artifact_uri}; flow run {mv.flow_run_id}; code {mv.code_version}")


@models_app.command("promote")
def models_promote(ctx: typer.Context, version: Annotated[str, typer.Argument()],
                   reason: Annotated[str, typer.Option(help="Why (recorded).")] = "promoted by an operator",
                   actor: Annotated[str | None, typer.Option(help="Who (default: $USER).")] = None) -> None:
    """Make VERSION the champion (servers pick it up on their next registry poll)."""
    import getpass

    from refitd.core import registry
    from refitd.core.db import engine_for

    mv = registry.promote(engine_for(_settings(ctx)), version, actor=actor or getpass.getuser(), reason=reason)
    console.print(f"{mv.version} is the champion")


@models_app.command("rollback")
def models_rollback(ctx: typer.Context,
                    reason: Annotated[str, typer.Option(help="Why (recorded).")] = "rolled back by an operator",
                    actor: Annotated[str | None, typer.Option(help="Who (default: $USER).")] = None) -> None:
    """Restore the previous champion; the current one is marked rejected."""
    import getpass

    from refitd.core import registry
    from refitd.core.db import engine_for

    mv = registry.rollback(engine_for(_settings(ctx)), actor=actor or getpass.getuser(), reason=reason)
    console.print(f"{mv.version} is the champion again")
