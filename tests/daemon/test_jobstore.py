"""The scheduler's rows hold next run times only: the jobs come from the settings, and a row written by
someone with database access can never make the daemon run code."""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

from apscheduler.events import EVENT_JOB_SUBMITTED
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from refitd.core.db import make_engine, upgrade
from refitd.core.settings import Settings
from refitd.daemon import jobs
from refitd.daemon.jobs import JOB_TABLE
from refitd.daemon.service import make_scheduler


class _Touch:
    """A pickle that creates a file when it is loaded: what a hostile row in a pickling job store does."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.path,))


def _settings(tmp_path: Path, **scheduler) -> Settings:  # type: ignore[no-untyped-def]
    settings = Settings.load(home=tmp_path, scheduler={"drift_interval_minutes": 10, **scheduler})
    upgrade(make_engine(settings.database_url))
    return settings


def _rows(engine) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        return {r.id: json.loads(r.job_state) for r in conn.execute(text(f"SELECT id, job_state FROM {JOB_TABLE}"))}


def _started(settings: Settings):  # type: ignore[no-untyped-def]
    engine = make_engine(settings.database_url)
    scheduler = make_scheduler(settings, engine)
    scheduler.start(paused=True)
    return scheduler, engine, jobs.reconcile(scheduler, settings)


def test_rows_are_json_and_next_run_times_survive_a_restart(tmp_path: Path) -> None:
    settings = _settings(tmp_path, label_trigger=500)
    scheduler, engine, actions = _started(settings)
    assert actions == {"drift_check": "added", "drift_followup": "added", "promotion_watch": "added",
                       "shadow_watch": "added", "retention": "added", "label_check": "added"}
    before = {j.id: j.next_run_time for j in scheduler.get_jobs()}
    scheduler.shutdown(wait=False)
    rows = _rows(engine)
    assert set(rows) == set(before) and all(set(r) == {"id", "next_run_time", "trigger"} for r in rows.values())

    scheduler, engine, actions = _started(settings)
    assert set(actions.values()) == {"kept"}
    after = {j.id: j for j in scheduler.get_jobs()}
    assert {k: j.next_run_time for k, j in after.items()} == before
    assert after["drift_check"].func_ref == "refitd.daemon.jobs:run_job" and after["drift_check"].args == ("drift_check",)
    scheduler.shutdown(wait=False)


def test_a_hostile_row_is_dropped_without_being_loaded(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    scheduler, engine, _ = _started(settings)
    scheduler.shutdown(wait=False)
    marker = tmp_path / "pwned"
    with engine.begin() as conn:  # what database write access could plant
        conn.execute(text(f"UPDATE {JOB_TABLE} SET job_state = :s WHERE id = 'drift_check'"),
                     {"s": pickle.dumps({"func": _Touch(marker)})})
        conn.execute(text(f"INSERT INTO {JOB_TABLE} (id, next_run_time, job_state) VALUES ('extra', 0, :s)"),
                     {"s": json.dumps({"id": "extra", "next_run_time": 0, "trigger": "interval[0:00:01]"}).encode()})
        conn.execute(text(f"UPDATE {JOB_TABLE} SET job_state = :s WHERE id = 'retention'"),
                     {"s": json.dumps({"id": "drift_check", "next_run_time": 0, "trigger": "interval[0:10:00]"}).encode()})

    scheduler, engine, actions = _started(settings)
    assert not marker.exists()
    assert actions["drift_check"] == "added" and actions["retention"] == "added" and "extra" not in actions
    assert sorted(j.id for j in scheduler.get_jobs()) == ["drift_check", "drift_followup", "promotion_watch", "retention",
                                                          "shadow_watch"]
    assert all(j.func_ref == "refitd.daemon.jobs:run_job" for j in scheduler.get_jobs())
    scheduler.shutdown(wait=False)


def test_a_changed_schedule_replaces_the_stored_job(tmp_path: Path) -> None:
    scheduler, engine, _ = _started(_settings(tmp_path))
    scheduler.shutdown(wait=False)
    scheduler, engine, actions = _started(_settings(tmp_path, drift_interval_minutes=3))
    assert actions["drift_check"] == "added" and str(scheduler.get_job("drift_check").trigger) == "interval[0:03:00]"
    assert actions["retention"] == "kept"
    scheduler.shutdown(wait=False)


def test_a_failed_job_store_write_does_not_stop_the_scheduler(tmp_path: Path, monkeypatch) -> None:
    """Writing a job's next run time fails once (the database is locked): the pass is logged and retried,
    the loop stays alive, and every due job is run and rescheduled."""
    settings = _settings(tmp_path)
    scheduler, engine, _ = _started(settings)
    store = scheduler._lookup_jobstore("default")
    scheduler.jobstore_retry_interval = 0.2
    past = time.time() - 5
    with engine.begin() as conn:
        for row in conn.execute(text(f"SELECT id, job_state FROM {JOB_TABLE}")).all():
            state = json.dumps({**json.loads(row.job_state), "next_run_time": past}).encode()
            conn.execute(text(f"UPDATE {JOB_TABLE} SET next_run_time = :t, job_state = :s WHERE id = :i"),
                         {"t": past, "s": state, "i": row.id})
    real, writes = store.update_job, []

    def update_job(job) -> None:  # type: ignore[no-untyped-def]
        writes.append(job.id)
        if len(writes) == 1:
            raise OperationalError("UPDATE", {}, Exception("database is locked"))
        real(job)

    monkeypatch.setattr(store, "update_job", update_job)
    submitted: list[str] = []
    scheduler.add_listener(lambda event: submitted.append(event.job_id), EVENT_JOB_SUBMITTED)
    scheduler.resume()
    deadline = time.time() + 10
    while time.time() < deadline and min(r["next_run_time"] for r in _rows(engine).values()) <= time.time():
        time.sleep(0.05)
    try:
        assert scheduler.alive
        assert min(r["next_run_time"] for r in _rows(engine).values()) > time.time()  # all rescheduled
        assert 1 <= submitted.count(writes[0]) <= 2  # the job whose write failed ran once more at most
    finally:
        scheduler.shutdown(wait=False)


def test_the_refit_cron_is_read_in_utc_whatever_the_hosts_zone(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        trigger = jobs.wanted(_settings(tmp_path, refit_cron="0 3 * * 0"))["scheduled_refit"]
        assert str(trigger.timezone) == "UTC"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_a_store_that_fails_while_the_daemon_starts_delays_its_scheduler_never_leaves_it_paused(
        tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The jobs are set up again until the store answers (a locked SQLite file, a failover): given up, the
    scheduler would stay paused for good under a daemon that serves and looks healthy."""
    from apscheduler.schedulers.base import STATE_RUNNING

    from refitd.daemon import service

    settings = _settings(tmp_path)
    upgrade(make_engine(settings.database_url))
    daemon = service.Daemon(settings)
    real, calls = jobs.reconcile, []

    def flaky(scheduler, settings):  # type: ignore[no-untyped-def]
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise OperationalError("INSERT INTO apscheduler_jobs", {}, Exception("database is locked"))
        return real(scheduler, settings)

    monkeypatch.setattr(jobs, "reconcile", flaky)
    monkeypatch.setattr(service, "RECONCILE_RETRY_S", 0.01)
    daemon.server.started = True
    try:
        daemon._start_when_serving()
        assert len(calls) == 3 and daemon.scheduler.state == STATE_RUNNING
        assert {job.id for job in daemon.scheduler.get_jobs()} >= {"drift_check", "retention"}
        assert daemon.healthy()
    finally:
        daemon.scheduler.shutdown(wait=False)
