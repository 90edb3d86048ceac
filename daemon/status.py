"""What `refitd status` shows, gathered from the store and the running server, rendered for a terminal."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy import inspect, text
from sqlmodel import func, select

from refitd.core import alerts, leases, registry
from refitd.core.db import engine_for, session_scope
from refitd.core.runs import gone, running
from refitd.core.settings import Settings
from refitd.core.tables import DriftCheck, Feedback, ModelVersion, Prediction, RefitRun
from refitd.daemon.jobs import JOB_TABLE
from refitd.daemon.drift.verdict import list_checks
from refitd.daemon.shadow import progress as shadow_progress



def gather_status(settings: Settings, *, events: int = 10, checks: int = 5) -> dict[str, Any]:
    """Champion, served version and health, drift verdicts, schedule, running refit, counts, events."""
    engine = engine_for(settings)
    with session_scope(engine) as session:
        champion = registry.get_champion(session)
        counts = {
            name: session.exec(select(func.count()).select_from(table)).one()
            for name, table in (("versions", ModelVersion), ("predictions", Prediction), ("feedback", Feedback),
                                ("drift checks", DriftCheck), ("refit runs", RefitRun))
        }
        recent = registry.list_events(session, limit=events)
        drift = [{"id": c.id, "created_at": _when(c.created_at), "verdict": c.verdict, "reason": c.reason,
                  "window": c.window_size, "report": c.report_path,
                  "estimate_error": ((c.signals or {}).get("_performance") or {}).get("estimate_error")}
                 for c in list_checks(session, limit=checks)]
        run = running(session)
        run_gone = gone(run) if run is not None else None
        shadow = shadow_progress(session, settings)
        waiting = alerts.waiting(session)
    champ = None
    if champion is not None:
        test = champion.frozen_scores
        champ = {"version": champion.version, "promoted_at": _when(champion.promoted_at),
                 "test_accuracy": test.get("accuracy"), "test_macro_f1": test.get("macro_f1"),
                 "gate_reason": champion.gate_reason}
    lease = leases.current(engine, "refit")
    refit = None
    if run is not None or lease is not None:
        refit = {"holder": lease.holder if lease else None, "trigger": run.trigger if run else None,
                 "started_at": _when(run.created_at) if run else None,
                 "progress": (run.metrics or {}).get("progress") if run else None,
                 "gone": run_gone}  # its process has ended: the daemon marks it failed (core/runs.py)
    return {
        "home": str(settings.home),
        "champion": champ,
        "server": _server(settings),
        "drift": drift,
        "schedule": _schedule(engine),
        "refit": refit,
        "shadow": shadow,
        "alerts": waiting and {**waiting, "oldest": _when(waiting["oldest"]),
                               "next_attempt_at": _when(waiting["next_attempt_at"])},
        "counts": counts,
        "events": [{"created_at": _when(e.created_at), "kind": e.kind, "subject": e.subject, "reason": e.reason}
                   for e in recent],
    }


def _server(settings: Settings) -> dict[str, Any]:
    """The running daemon's server (from its run file) or the configured address."""
    url = f"http://{settings.serving.host}:{settings.serving.port}"
    try:
        url = json.loads(settings.runfile.read_text())["url"]
    except (OSError, ValueError, KeyError):
        pass
    try:
        body = httpx.get(f"{url}/v1/status", timeout=2).json()
    except (httpx.HTTPError, ValueError) as exc:
        return {"url": url, "up": False, "error": type(exc).__name__}
    return {"url": url, "up": True, "serving": body.get("serving"), "ready": body.get("ready"),
            "queue": body.get("queue_depth"), "uptime_s": body.get("uptime_s"), "shadow": body.get("shadow")}


def _schedule(engine) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """The stored jobs and their next run (APScheduler keeps it as a UTC timestamp)."""
    if not inspect(engine).has_table(JOB_TABLE):
        return []
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT id, next_run_time FROM {JOB_TABLE} ORDER BY next_run_time")).all()
    return [{"job": job_id, "next_run": None if ts is None else
             datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")} for job_id, ts in rows]


def _when(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _f(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_status(info: dict[str, Any], console: Console) -> None:
    champ, server = info["champion"], info["server"]
    if champ is None:
        console.print("[yellow]no champion yet: run `refitd init`[/]")
    else:
        console.print(f"champion [bold]{champ['version']}[/] (promoted {champ['promoted_at']} UTC): test accuracy "
                      f"{_f(champ['test_accuracy'])}, macro-F1 {_f(champ['test_macro_f1'])}")
    if server["up"]:
        console.print(f"server {server['url']}: serving [bold]{server['serving']}[/], "
                      f"{'ready' if server['ready'] else '[red]not ready[/]'}, queue {server['queue']}, "
                      f"up {server['uptime_s']:.0f} s")
    else:
        console.print(f"server {server['url']}: [yellow]not reachable[/] ({server['error']})")
    refit = info["refit"]
    if refit:
        progress = refit["progress"] or {}
        console.print(f"refit running: trigger {refit['trigger']}, started {refit['started_at']} UTC, stage "
                      f"{progress.get('stage', 'data')} (done: {progress.get('timings', {})}), lease {refit['holder']}")
        if refit.get("gone"):
            console.print(f"[red]  but {refit['gone']}[/]: it will not finish (marked failed when the daemon "
                          "starts or next decides on a refit)")
    else:
        console.print("refit: none running")
    _render_shadow(info.get("shadow"), (server.get("shadow") if server["up"] else None), console)
    waiting = info.get("alerts")
    if waiting:
        console.print(f"[red]alerts not delivered: {waiting['count']}[/], the oldest raised {waiting['oldest']} UTC, "
                      f"{waiting['attempts']} tries, last error {waiting['last_error'] or '-'}; next try "
                      f"{waiting['next_attempt_at']} UTC")
    _table(console, "drift checks", ("id", "when (UTC)", "verdict", "window", "estimate error", "reason"),
           [(str(d["id"]), d["created_at"], d["verdict"], str(d["window"]),
             "-" if d["estimate_error"] is None else f"{d['estimate_error']:+.3f}", d["reason"]) for d in info["drift"]])
    _table(console, "schedule", ("job", "next run (UTC)"), [(j["job"], j["next_run"] or "paused")
                                                            for j in info["schedule"]])
    console.print("counts: " + ", ".join(f"{k} {v}" for k, v in info["counts"].items()))
    _table(console, "recent events", ("when (UTC)", "kind", "subject", "reason"),
           [(e["created_at"], e["kind"], e["subject"] or "", e["reason"]) for e in info["events"]])


def _render_shadow(shadow: dict[str, Any] | None, here: dict[str, Any] | None, console: Console) -> None:
    if shadow is None:
        return
    labelled = (f"accuracy {_f(shadow['accuracy'])} vs {_f(shadow['champion_accuracy'])} on {shadow['labelled']} labels"
                if shadow["labelled"] else "no labels yet")
    console.print(f"shadow in progress: [bold]{shadow['version']}[/] beside {shadow['champion'] or '-'} for "
                  f"{shadow['minutes']:g} min: {shadow['scored']} requests scored, agreement {_f(shadow['agreement'])}, "
                  f"{labelled}" + (f"; this server: {here['scored']} scored, {here['dropped']} dropped" if here else ""))


def _table(console: Console, title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    if not rows:
        console.print(f"{title}: none")
        return
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*r)
    console.print(table)
