"""Refit-run rows: one per training flow run, from start to verdict.

A run records the process that runs it (``params["process"]``, host and pid). A row still "running"
whose process on this host is gone (killed with the daemon, the OOM killer, a reboot) would otherwise say
"running" forever; :func:`gone` tells, and :func:`close_gone` marks such rows failed.
"""

from __future__ import annotations

import socket
from typing import Any

from sqlmodel import Session, col, select

from refitd.core.errors import NotFoundError
from refitd.core.tables import RefitRun, utcnow


def start_run(session: Session, *, trigger: str, params: dict[str, Any], flow_run_id: str | None = None) -> RefitRun:
    """Record that a run has started."""
    run = RefitRun(trigger=trigger, status="running", params=params, flow_run_id=flow_run_id)
    session.add(run)
    session.flush()
    session.refresh(run)
    return run


def finish_run(
    session: Session,
    *,
    run_id: int,
    status: str,
    reason: str,
    verdict: str | None = None,
    candidate_version: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> RefitRun:
    """Record a run's outcome: completed or failed, the verdict and why."""
    run = session.get(RefitRun, run_id)
    if run is None:
        raise NotFoundError("refit run", run_id)
    run.status, run.reason, run.verdict = status, reason, verdict
    run.candidate_version = candidate_version or run.candidate_version
    run.metrics = metrics if metrics is not None else run.metrics
    run.finished_at = utcnow()
    session.add(run)
    return run


def record_progress(session: Session, *, run_id: int, stage: str, timings: dict[str, float]) -> None:
    """Note the stage a running run has reached and the seconds each finished stage took."""
    run = session.get(RefitRun, run_id)
    if run is not None:
        run.metrics = {"progress": {"stage": stage, "timings": dict(timings)}}
        session.add(run)


def running(session: Session) -> RefitRun | None:
    """The newest run still marked running, if any."""
    return session.exec(select(RefitRun).where(RefitRun.status == "running").order_by(col(RefitRun.id).desc())).first()


def gone(run: RefitRun) -> str | None:
    """Why ``run``'s process is known to have ended, else None (it lives, or ran on another host, or an
    older run recorded no process). A pid taken since by a newer process is not the run's."""
    import psutil

    host, _, pid = str((run.params or {}).get("process") or "").rpartition(":")
    if not pid.isdigit() or host != socket.gethostname():
        return None
    try:
        process = psutil.Process(int(pid))
        started, zombie = process.create_time(), process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return f"its process {host}:{pid} has ended"
    except psutil.Error:  # not ours to inspect (another user's pid): it lives
        return None
    if zombie:  # ended, not yet reaped by its parent
        return f"its process {host}:{pid} has ended"
    if started > run.created_at.timestamp():
        return f"its process {host}:{pid} has ended (the pid now belongs to a newer process)"
    return None


def close_gone(session: Session) -> list[RefitRun]:
    """Mark failed every run still "running" whose process on this host has ended without recording an
    outcome; returns them."""
    closed = []
    for run in list(session.exec(select(RefitRun).where(RefitRun.status == "running"))):
        why = gone(run)
        if why is None:
            continue
        session.refresh(run)  # read again once the process is known gone: it may have finished its row just before
        if run.status == "running":
            closed.append(finish_run(session, run_id=run.id, status="failed",  # type: ignore[arg-type]
                                     reason=f"{why} without recording an outcome (killed, or the host restarted)"))
    return closed


def list_runs(session: Session, *, limit: int = 20) -> list[RefitRun]:
    """Runs, newest first."""
    return list(session.exec(select(RefitRun).order_by(col(RefitRun.id).desc()).limit(limit)))
