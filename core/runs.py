"""Refit-run rows: one per training flow run, from start to verdict."""

from __future__ import annotations

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


def list_runs(session: Session, *, limit: int = 20) -> list[RefitRun]:
    """Runs, newest first."""
    return list(session.exec(select(RefitRun).order_by(col(RefitRun.id).desc()).limit(limit)))
