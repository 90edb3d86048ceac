"""The daemon's scheduled jobs, stored in the database by APScheduler so a restart keeps the schedule.

A stored job names ``daemon.jobs:run_job`` and the job's name; ``run_job`` finds the running
daemon's objects (settings, engine, launcher) in the context that ``bind`` set. Each job
catches at its boundary: the exception is logged and recorded as a ``job_failed`` event,
and the daemon goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta, timezone
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine

from refitd.core import alerts, children, registry
from refitd.core.db import session_scope
from refitd.core.settings import Settings
from refitd.core.retention import prune_predictions
from refitd.core.tables import utcnow
from refitd.daemon import guard, shadow, triggers
from refitd.daemon.alerts import Sender
from refitd.daemon.checker import CheckProcess
from refitd.daemon.drift import retention as drift_retention
from refitd.daemon.launcher import RefitLauncher

log = logging.getLogger(__name__)

JOB_TABLE = "apscheduler_jobs"  # APScheduler's job store table in the refitd database
ALERT_DELIVERY_S = 30  # how often the outbox is looked at for alerts that did not go out at once


def followup_s(drift_interval_minutes: float) -> int:
    """How often a drifted verdict's refit is looked at between checks: a quarter of the interval, 5 to 60 s."""
    return round(max(5.0, min(60.0, drift_interval_minutes * 60 / 4)))


@dataclass
class Context:
    settings: Settings
    engine: Engine
    launcher: RefitLauncher
    on_status: Callable[[str], None] = lambda status: None
    stopping: threading.Event = field(default_factory=threading.Event)  # set on shutdown: running children stop
    checks: CheckProcess | None = None  # the kept drift-check process (drift.process_checks > 0)
    followed_up: int | None = None  # the drift check the follow-up last tried to start a refit after

    def __post_init__(self) -> None:
        if self.checks is None and self.settings.drift.process_checks > 0:
            self.checks = CheckProcess(self.settings)


_context: Context | None = None


def bind(context: Context | None) -> None:
    """Point stored jobs at this process's objects (None on shutdown)."""
    global _context
    _context = context


def run_job(name: str) -> None:
    """Run one job by name; never raises (APScheduler would only log it)."""
    ctx = _context
    if ctx is None:
        log.warning("job %s fired with no daemon bound; skipped", name)
        return
    start = time.perf_counter()
    try:
        outcome = JOBS[name](ctx)
        log.debug("job %s done in %.1f s: %s", name, time.perf_counter() - start, outcome)
    except Exception as exc:  # noqa: BLE001 - the job boundary: record, go on
        log.exception("job %s failed", name)
        try:
            with session_scope(ctx.engine) as session:
                registry.record_event(session, kind="job_failed", subject=name, actor="daemon",
                                      reason=f"{name} failed: {type(exc).__name__}: {exc}")
        except Exception:  # noqa: BLE001 - the database itself may be what failed
            log.exception("could not record the failure of job %s", name)


def drift_check(ctx: Context) -> dict[str, Any]:
    """Check the current window in the kept check process (refitd.daemon.checker; with ``drift.process_checks =
    0`` a process of its own: ``python -m refitd.daemon.drift``, ``drift.threads`` threads at ``drift.nice``),
    stopped after ``drift.timeout_minutes``, which writes the row, report and alert; then
    consider a refit when it drifted. A failed or hung check raises: a ``job_failed`` event with its error."""
    with session_scope(ctx.engine) as session:
        champion = registry.get_champion(session)
    if champion is None:
        return {"skipped": "no champion yet"}
    d = ctx.settings.drift
    if ctx.checks is not None:
        code, result = ctx.checks.run(timeout_s=d.timeout_minutes * 60, cancel=ctx.stopping)
    else:
        code, result = children.run(ctx.settings.updated({"serving": {"threads": d.threads}}), [],
                                    module=children.DRIFT_CHECK, log_file=None, threads=d.threads, niceness=d.nice,
                                    timeout_s=d.timeout_minutes * 60, cancel=ctx.stopping)
    if ctx.stopping.is_set() and "verdict" not in result:
        return {"skipped": "the daemon is shutting down"}
    if code != 0 or "verdict" not in result:
        raise children.ChildFailed(f"the drift check of {champion.version}", code, result.get("error"))
    ctx.on_status(f"serving {champion.version}; last drift check: {result['verdict']}")
    if ctx.stopping.is_set():  # the check's row is written; no refit starts on the way out
        return {"check": result["check"], "verdict": result["verdict"], "refit": False,
                "decision": "the daemon is shutting down"}
    decision = triggers.consider(ctx.settings, ctx.engine, ctx.launcher, "drift", drift_verdict=result["verdict"])
    return {"check": result["check"], "verdict": result["verdict"], "seconds": result.get("seconds"),
            "peak_rss_mb": result.get("peak_rss_mb"), "pid": result.get("pid"), "checks_run": result.get("checks_run"),
            "refit": decision.start, "decision": decision.reason}


def drift_followup(ctx: Context) -> dict[str, Any] | None:
    """A drift refit that waits only for labels starts once they are in, not at the next check."""
    decision = triggers.follow_up_drift(ctx.settings, ctx.engine, ctx.launcher, tried=ctx.followed_up,
                                        on_try=lambda check_id: setattr(ctx, "followed_up", check_id))
    return None if decision is None else {"refit": decision.start, "decision": decision.reason}


def label_check(ctx: Context) -> dict[str, Any]:
    """Start a refit once enough new labels arrived (scheduler.label_trigger)."""
    decision = triggers.consider(ctx.settings, ctx.engine, ctx.launcher, "labels")
    return {"refit": decision.start, "decision": decision.reason}


def scheduled_refit(ctx: Context) -> dict[str, Any]:
    """The cron schedule's refit."""
    decision = triggers.consider(ctx.settings, ctx.engine, ctx.launcher, "cron")
    return {"refit": decision.start, "decision": decision.reason}


def promotion_watch(ctx: Context) -> dict[str, Any] | None:
    """Compare a freshly promoted champion with its predecessor; roll back on a drop."""
    outcome = guard.check(ctx.settings, ctx.engine)
    if outcome is not None and outcome["action"] == "rolled_back" and ctx.settings.drift.webhook_url:
        Sender(ctx.settings, ctx.engine).send_soon()  # the alert is in the outbox already, with the rollback
    return outcome


def alert_delivery(ctx: Context) -> dict[str, int] | None:
    """Send what waits in the alert outbox (a receiver that was down, a process that died before sending)."""
    return Sender(ctx.settings, ctx.engine).deliver() if ctx.settings.drift.webhook_url else None


def shadow_watch(ctx: Context) -> dict[str, Any] | None:
    """Promote or reject the version in shadow once it has scored enough live traffic."""
    return shadow.check(ctx.settings, ctx.engine)


def retention(ctx: Context) -> dict[str, Any]:
    """Prune predictions without feedback (in batches), HTML reports, sent alerts and retired versions' drift
    references older than scheduler.retention_days."""
    cutoff = utcnow() - timedelta(days=ctx.settings.scheduler.retention_days)
    pruned = prune_predictions(ctx.engine, cutoff, pause_s=0.05)  # in batches: no long writer lock
    alerts.give_up_expired(ctx.engine, timedelta(hours=ctx.settings.drift.webhook_give_up_hours))  # URL or not
    sent = alerts.prune(ctx.engine, cutoff)  # delivered or given up; a pending alert stays until it is given up
    reports = 0
    for path in ctx.settings.reports_dir.glob("*.html") if ctx.settings.reports_dir.is_dir() else []:
        if path.stat().st_mtime < cutoff.timestamp():
            path.unlink(missing_ok=True)
            reports += 1
    if pruned or reports or sent:
        log.info("retention: pruned %s predictions, %s reports and %s sent alerts older than %s",
                 pruned, reports, sent, cutoff)
    references = drift_retention.prune_references(ctx.settings, ctx.engine, cutoff)  # the store last: it may fail
    return {"predictions": pruned, "reports": reports, "alerts": sent, "drift_references": len(references)}


JOBS: dict[str, Callable[[Context], Any]] = {
    "drift_check": drift_check, "label_check": label_check, "scheduled_refit": scheduled_refit,
    "promotion_watch": promotion_watch, "shadow_watch": shadow_watch, "retention": retention,
    "alert_delivery": alert_delivery, "drift_followup": drift_followup,
}


def wanted(settings: Settings) -> dict[str, BaseTrigger]:
    """The jobs these settings ask for, by id, with their triggers."""
    s = settings.scheduler
    jobs: dict[str, BaseTrigger] = {
        "drift_check": IntervalTrigger(seconds=round(s.drift_interval_minutes * 60)),
        "drift_followup": IntervalTrigger(seconds=followup_s(s.drift_interval_minutes)),
        "promotion_watch": IntervalTrigger(seconds=round(s.watch_interval_minutes * 60)),
        "shadow_watch": IntervalTrigger(seconds=round(s.watch_interval_minutes * 60)),
        "retention": IntervalTrigger(hours=6),
    }
    if settings.drift.webhook_url is not None:
        jobs["alert_delivery"] = IntervalTrigger(seconds=ALERT_DELIVERY_S)
    if s.label_trigger is not None:
        jobs["label_check"] = IntervalTrigger(seconds=round(s.label_check_minutes * 60))
    if s.refit_cron is not None:
        jobs["scheduled_refit"] = CronTrigger.from_crontab(s.refit_cron, timezone=timezone.utc)  # as the README says
    return jobs


def reconcile(scheduler: Any, settings: Settings) -> dict[str, str]:
    """Make the stored jobs match the settings: keep unchanged ones (and their next run), replace changed, drop gone."""
    wanted_jobs = wanted(settings)
    actions: dict[str, str] = {}
    for job in scheduler.get_jobs():
        if job.id not in wanted_jobs:
            scheduler.remove_job(job.id)
            actions[job.id] = "removed"
    for job_id, trigger in wanted_jobs.items():
        existing = scheduler.get_job(job_id)
        if existing is not None and str(existing.trigger) == str(trigger):
            actions[job_id] = "kept"
            continue
        scheduler.add_job("refitd.daemon.jobs:run_job", trigger, args=[job_id], id=job_id, name=job_id,
                          replace_existing=True)
        actions[job_id] = "replaced" if existing is not None else "added"
    return actions
