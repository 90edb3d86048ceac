"""``refitd drift …``: run a check now, list checks, show one, find its HTML report."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from refitd.cli.terminal import console
from refitd.cli.terminal import settings_from as _settings

drift_app = typer.Typer(help="Drift checks on production traffic.", no_args_is_help=True)


def _print_check(row) -> None:  # type: ignore[no-untyped-def]
    colour = {"drifted": "red", "not_drifted": "green"}.get(row.verdict, "yellow")
    console.print(f"check {row.id} on {row.model_version}: [{colour}]{row.verdict}[/] — {row.reason}")
    table = Table(title=f"window of {row.window_size} predictions ({row.window_start} … {row.window_end})")
    for name in ("signal", "method", "score", "p-value", "threshold", "drifted"):
        table.add_column(name)
    for name, sig in row.signals.items():
        if not name.startswith("_"):
            table.add_row(name, sig["method"], f"{sig['score']:.3f}", _num(sig.get("p_value"), ".4f"),
                          f"{sig['threshold']:.4g}", "yes" if sig["drifted"] else "no")
    console.print(table)
    calibration = row.signals.get("_calibration") or {}
    if calibration:
        console.print(f"calibrated for a false-alarm rate of {calibration.get('false_alarm_rate')} per check "
                      f"(p-value cutoff {_num(calibration.get('cutoff'), '.4f')})")
    reference = row.signals.get("_reference") or {}
    if reference:
        console.print(f"reference: {reference.get('rows')} rows, {reference.get('source')}")
    perf = row.signals.get("_performance") or {}
    if perf:
        measured, estimate = perf.get("measured_accuracy"), perf.get("estimated_accuracy")
        console.print(f"labelled rows {perf['labelled']}; measured accuracy {_num(measured)}; "
                      f"label-free estimate {_num(estimate)} (window)"
                      + (f", {_num(perf.get('estimate_on_labelled'))} on the labelled rows: error "
                         f"{_num(perf.get('estimate_error'), '+.3f')}" if perf.get("estimate_error") is not None else ""))
    if row.report_path:
        console.print(f"report: {row.report_path}")


def _num(value, spec: str = ".3f") -> str:  # type: ignore[no-untyped-def]
    return "-" if value is None else format(value, spec)


@drift_app.command("check")
def drift_check(ctx: typer.Context) -> None:
    """Check the current window now and print the verdict table."""
    from refitd.core.db import engine_for, upgrade
    from refitd.daemon.drift.check import run_check

    from refitd.daemon.alerts import wait_for_senders

    settings = _settings(ctx)
    engine = engine_for(settings)
    upgrade(engine)
    _print_check(run_check(settings, engine))
    wait_for_senders(settings)  # a verdict change's alert: sent before the command returns, or left to the daemon


@drift_app.command("alerts")
def drift_alerts(ctx: typer.Context, limit: Annotated[int, typer.Option(help="Most rows.")] = 20,
                 send: Annotated[bool, typer.Option("--send", help="Send the waiting alerts now (after fixing "
                                                    "the receiver), oldest first.")] = False) -> None:
    """Webhook alerts, newest first: delivered, waiting (tries, last error) or given up."""
    from sqlmodel import col, select

    from refitd.core.db import engine_for, session_scope, upgrade
    from refitd.core.tables import Alert
    from refitd.daemon.alerts import Sender

    settings = _settings(ctx)
    engine = engine_for(settings)
    if send:
        upgrade(engine)
        counts = Sender(settings, engine).deliver(now_due=True)
        console.print(", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()))
    with session_scope(engine) as session:
        rows = session.exec(select(Alert).order_by(col(Alert.id).desc()).limit(limit)).all()
    table = Table(title="alerts")
    for name in ("id", "raised (UTC)", "kind", "subject", "status", "tries", "delivered (UTC)", "last error"):
        table.add_column(name)
    for a in rows:
        table.add_row(str(a.id), f"{a.created_at:%Y-%m-%d %H:%M:%S}", a.kind, a.subject or "-", a.status,
                      str(a.attempts), f"{a.delivered_at:%Y-%m-%d %H:%M:%S}" if a.delivered_at else "-",
                      a.last_error or "-")
    console.print(table)


@drift_app.command("list")
def drift_list(ctx: typer.Context, limit: Annotated[int, typer.Option(help="Most rows.")] = 20) -> None:
    """Recent checks, newest first."""
    from refitd.core.db import engine_for, session_scope
    from refitd.daemon.drift.verdict import list_checks

    with session_scope(engine_for(_settings(ctx))) as session:
        rows = list_checks(session, limit=limit)
    table = Table(title="drift checks")
    for name in ("id", "time", "version", "window", "verdict", "reason"):
        table.add_column(name)
    for r in rows:
        table.add_row(str(r.id), f"{r.created_at:%Y-%m-%d %H:%M}", r.model_version or "-", str(r.window_size),
                      r.verdict, r.reason[:80])
    console.print(table)


def _get(ctx: typer.Context, check_id: int):  # type: ignore[no-untyped-def]
    from refitd.core.db import engine_for, session_scope
    from refitd.core.errors import NotFoundError
    from refitd.core.tables import DriftCheck

    with session_scope(engine_for(_settings(ctx))) as session:
        row = session.get(DriftCheck, check_id)
    if row is None:
        raise NotFoundError("drift check", check_id)
    return row


@drift_app.command("show")
def drift_show(ctx: typer.Context, check_id: Annotated[int, typer.Argument(help="Check id.")]) -> None:
    """Every signal of one check, its verdict and reason."""
    _print_check(_get(ctx, check_id))


@drift_app.command("open")
def drift_open(ctx: typer.Context, check_id: Annotated[int, typer.Argument(help="Check id.")]) -> None:
    """Print the HTML report's path (and open it in a browser when there is one)."""
    import webbrowser

    row = _get(ctx, check_id)
    if not row.report_path:
        console.print(f"check {check_id} has no report ({row.verdict}: {row.reason})")
        raise typer.Exit(1)
    console.print(row.report_path)
    webbrowser.open(f"file://{row.report_path}")
