"""APScheduler's SQL job store without pickle: the database keeps when each job runs next, nothing else.

APScheduler 3 stores a pickled job (function reference, trigger, arguments) per row, so anyone who can
write to that table can make the daemon run code of their choosing. Here a row holds JSON — the job's
id, its next run time and its schedule as text — and the job itself is rebuilt from the settings on every read: the one job
function, its id as the only argument, the trigger the settings ask for. Write access to the database
can then delay, advance or drop a scheduled job, never run code. Rows this store cannot read (an old
pickled row, an id the settings do not ask for) are never unpickled: they are dropped, and
``jobs.reconcile`` adds the job again from the settings.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from apscheduler.job import Job
from apscheduler.jobstores.base import ConflictingIdError, JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.util import datetime_to_utc_timestamp, utc_timestamp_to_datetime
from sqlalchemy import and_, select
from sqlalchemy.exc import IntegrityError

log = logging.getLogger(__name__)

JOB_FUNCTION = "refitd.daemon.jobs:run_job"


class StoreTolerantScheduler(BackgroundScheduler):
    """APScheduler's background scheduler whose loop outlives a failed job-store write.

    APScheduler 3 retries a failed read of due jobs, but an error writing a job's next run time back
    (``update_job``: SQLite busy, a PostgreSQL connection reset) escapes its loop and ends the scheduler's
    thread while ``running`` stays true: no job would run again, and nothing would say so. Here such a
    pass is logged and retried after ``jobstore_retry_interval``; a job whose next run time was not
    written may run once more (coalesced); no job stops for good. ``alive`` tells the watchdog whether
    the loop still runs."""

    def _process_jobs(self) -> float | None:
        try:
            return super()._process_jobs()
        except Exception:  # noqa: BLE001 - the loop is the daemon's clock: it must outlive any one pass
            log.exception("scheduler pass failed (job store unavailable?); retrying in %g s",
                          self.jobstore_retry_interval)
            return self.jobstore_retry_interval

    @property
    def alive(self) -> bool:
        thread = getattr(self, "_thread", None)
        return bool(self.running and thread is not None and thread.is_alive())


class UnreadableJob(ValueError):
    """A stored row that is not a job these settings ask for."""


class SettingsJobStore(SQLAlchemyJobStore):
    """Rows are ``{"id", "next_run_time", "trigger"}`` in JSON (the trigger as text, to notice a changed
    schedule); the function, the trigger itself and the options come from ``triggers()``."""

    def __init__(self, *, engine: Any, tablename: str, triggers: Callable[[], dict[str, BaseTrigger]],
                 misfire_grace_time: int) -> None:
        super().__init__(engine=engine, tablename=tablename)
        self.triggers, self.misfire_grace_time = triggers, misfire_grace_time

    def add_job(self, job: Job) -> None:
        insert = self.jobs_t.insert().values(id=job.id, next_run_time=datetime_to_utc_timestamp(job.next_run_time),
                                             job_state=_row(job))
        with self.engine.begin() as connection:
            try:
                connection.execute(insert)
            except IntegrityError:
                raise ConflictingIdError(job.id) from None

    def update_job(self, job: Job) -> None:
        update = (self.jobs_t.update()
                  .values(next_run_time=datetime_to_utc_timestamp(job.next_run_time), job_state=_row(job))
                  .where(self.jobs_t.c.id == job.id))
        with self.engine.begin() as connection:
            if connection.execute(update).rowcount == 0:
                raise JobLookupError(job.id)

    def lookup_job(self, job_id: str) -> Job | None:
        jobs = self._read(self.jobs_t.c.id == job_id)
        return jobs[0] if jobs else None

    def _get_jobs(self, *conditions: Any) -> list[Job]:
        return self._read(*conditions)

    def _read(self, *conditions: Any) -> list[Job]:
        """The rows matching ``conditions`` as jobs, soonest first; unreadable rows are dropped, never executed."""
        query = select(self.jobs_t.c.id, self.jobs_t.c.job_state).order_by(self.jobs_t.c.next_run_time)
        query = query.where(and_(*conditions)) if conditions else query
        jobs, dropped = [], []
        with self.engine.begin() as connection:
            for row in connection.execute(query):
                try:
                    jobs.append(self._reconstitute(row.id, row.job_state))
                except UnreadableJob as exc:
                    log.warning("scheduler row %r: %s", row.id, exc)
                    dropped.append(row.id)
            if dropped:
                connection.execute(self.jobs_t.delete().where(self.jobs_t.c.id.in_(dropped)))
        return jobs

    def _reconstitute_job(self, job_state: bytes) -> Job:  # never called: _read passes the row's id too
        raise NotImplementedError

    def _reconstitute(self, job_id: str, job_state: bytes) -> Job:
        try:
            stored = json.loads(job_state)
            next_run = stored["next_run_time"]
            if stored["id"] != job_id or not (next_run is None or isinstance(next_run, int | float)):
                raise ValueError
        except (ValueError, TypeError, KeyError):
            raise UnreadableJob("not a refitd job row (an old pickled job?); dropped, the settings rebuild it") from None
        trigger = self.triggers().get(job_id)
        if trigger is None:
            raise UnreadableJob(f"job {job_id!r} is not one the settings ask for; it is dropped")
        if stored.get("trigger") != str(trigger):
            raise UnreadableJob(f"its schedule changed ({stored.get('trigger')} → {trigger}); rebuilt from the settings")
        job = Job.__new__(Job)
        job.__setstate__({
            "version": 1, "id": job_id, "func": JOB_FUNCTION, "trigger": trigger, "executor": "default",
            "args": (job_id,), "kwargs": {}, "name": job_id, "misfire_grace_time": self.misfire_grace_time,
            "coalesce": True, "max_instances": 1,
            "next_run_time": None if next_run is None else _aware(utc_timestamp_to_datetime(next_run), trigger),
            "jobstore": self,
        })
        job._scheduler = self._scheduler
        job._jobstore_alias = self._alias
        return job


def _row(job: Job) -> bytes:
    if job.func_ref != JOB_FUNCTION or list(job.args) != [job.id]:
        raise ValueError(f"this store keeps only {JOB_FUNCTION}(job id) jobs; got {job.func_ref}{tuple(job.args)}")
    return json.dumps({"id": job.id, "next_run_time": datetime_to_utc_timestamp(job.next_run_time),
                       "trigger": str(job.trigger)}).encode()


def _aware(when: datetime, trigger: BaseTrigger) -> datetime:
    zone = getattr(trigger, "timezone", None)
    return when.astimezone(zone) if zone is not None else when
