"""``refitd run``: the composition root of the long-running service.

One process: the HTTP server from ``serving/`` in the main thread (uvicorn), APScheduler's
background scheduler with its jobs stored in the same database, the refit launcher, and
the systemd notifier. SIGTERM / SIGINT: STOPPING=1, stop accepting and drain in-flight
requests, flush the prediction log (the app's lifespan), stop the scheduler, then stop a
local refit within ``refit.stop_timeout_s``. A second SIGINT forces the exit.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import timezone

import uvicorn
from apscheduler.executors.pool import ThreadPoolExecutor

from refitd.core import reference_info, registry
from refitd.core.db import engine_for, session_scope, upgrade
from refitd.core.registration import sweep
from refitd.core.settings import Settings
from refitd.core.tables import utcnow
from refitd.daemon import drift, jobs
from refitd.daemon.jobs import JOB_TABLE
from refitd.daemon.jobstore import SettingsJobStore, StoreTolerantScheduler
from refitd.daemon.launcher import RefitLauncher
from refitd.daemon.notify import Notifier
from refitd.serving.server import GracefulServer, build, uvicorn_config

log = logging.getLogger(__name__)

RECONCILE_RETRY_S = 1.0  # the first wait before setting up the scheduler's jobs again (doubling, up to 30 s)



class DaemonServer(GracefulServer):
    """The serving loop. The signal handler only sets uvicorn's flags; the main loop's next tick
    sees them and, before draining, tells the daemon (STOPPING=1 to systemd, a log line)."""

    def __init__(self, config: uvicorn.Config, on_exit: list | None = None) -> None:
        super().__init__(config)
        self.on_exit = on_exit or []
        self._announced = False

    async def on_tick(self, counter: int) -> bool:
        should_exit = await super().on_tick(counter)
        if should_exit and not self._announced:
            self._announced = True
            for callback in self.on_exit:
                callback(self.force_exit)
        return should_exit


def make_scheduler(settings: Settings, engine) -> StoreTolerantScheduler:  # type: ignore[no-untyped-def]
    """APScheduler 3 with a job store in the refitd database that keeps next run times only (no pickle:
    daemon/jobstore.py) whose loop outlives a failed write; coalescing and misfire grace set."""
    return StoreTolerantScheduler(
        jobstores={"default": SettingsJobStore(engine=engine, tablename=JOB_TABLE, triggers=lambda: jobs.wanted(settings),
                                               misfire_grace_time=settings.scheduler.misfire_grace_s)},
        executors={"default": ThreadPoolExecutor(max_workers=2)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": settings.scheduler.misfire_grace_s},
        timezone=timezone.utc,
    )


class Daemon:
    def __init__(self, settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
        self.settings = settings
        self.engine = engine_for(settings)
        self.serving = build(settings)
        self.launcher = RefitLauncher(settings, self.engine)
        self.scheduler = make_scheduler(settings, self.engine)
        self.notifier = Notifier()
        self.server = DaemonServer(uvicorn_config(settings, self.serving.app, host=host, port=port),
                                   on_exit=[self._stopping])
        self.context = jobs.Context(settings, self.engine, self.launcher, on_status=self.notifier.status)
        self._stop_announced = False
        self._forced = False

    def run(self) -> int:
        """Serve and schedule until a stop signal; return the exit code."""
        upgrade(self.engine)
        self._sweep_artifacts()
        self.launcher.close_gone()  # rows a crash left "running": failed now, not at the first refit decision
        jobs.bind(self.context)
        threading.Thread(target=self._start_when_serving, name="daemon-start", daemon=True).start()
        try:
            self.server.run()
        finally:
            self._shutdown()
        return 0

    def _sweep_artifacts(self) -> None:
        """Clear what a crash left: stale scratch folders and folders no registry row names in the artifact store,
        unfinished copies of the reference dataset there and in the home; each sweep on its own."""
        for what, clear in (("the artifact store", lambda: sweep(self.engine, self.serving.plane.store)),
                            ("the home's reference folder", lambda: reference_info.sweep(self.settings)),
                            ("the drift reference cache", lambda: drift.sweep(self.settings))):
            try:
                swept = clear()
            except Exception:  # noqa: BLE001 - leftovers cost disk space, not correctness: serve anyway
                log.exception("could not sweep %s", what)
                continue
            if swept:
                log.info("%s swept: %s", what[0].upper() + what[1:], ", ".join(p.name for p in swept))

    def _start_when_serving(self) -> None:
        while not self.server.started and not self.server.should_exit:
            time.sleep(0.05)
        if self.server.should_exit:
            return
        actions = self._reconcile_until_done()
        if actions is None:
            return
        self.scheduler.resume()
        log.info("scheduler started: %s", ", ".join(f"{k} {v}" for k, v in sorted(actions.items())))
        try:
            with session_scope(self.engine) as session:
                champion = registry.get_champion(session)
            serving = champion.version if champion else "no model yet"
        except Exception:  # noqa: BLE001 - a line of the ready message is not worth a daemon that never says ready
            log.exception("could not read the champion for the ready message")
            serving = "the champion (not read)"
        ready = f"serving {serving} on {self.server.config.host}:{self.server.config.port}; {len(actions)} jobs scheduled"
        self._write_runfile()
        self.notifier.ready(ready)
        self.notifier.start_watchdog(self.healthy)
        log.info("refitd ready: %s", ready)

    def _reconcile_until_done(self) -> dict[str, str] | None:
        """The scheduler's jobs made to match the settings, retried while the store fails (a locked SQLite file,
        a PostgreSQL failover): given up, the scheduler would stay paused for good — no checks, refits or
        retention — under a daemon that serves and looks alive. None when a stop came first."""
        delay = RECONCILE_RETRY_S
        while not self.server.should_exit:
            try:
                if not self.scheduler.running:  # its job store's start reads the store too
                    self.scheduler.start(paused=True)
                return jobs.reconcile(self.scheduler, self.settings)
            except Exception:  # noqa: BLE001 - see above: retry, never leave the scheduler paused
                log.exception("could not set up the scheduler's jobs; retrying in %g s", delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        return None

    def _write_runfile(self) -> None:
        """Where this daemon listens, for `refitd status` and tools (removed on a clean stop)."""
        c = self.server.config
        self.settings.runfile.write_text(json.dumps({"pid": os.getpid(), "url": f"http://{c.host}:{c.port}",
                                            "started_at": utcnow().isoformat()}))

    def healthy(self) -> bool:
        """Serving, the scheduler's loop alive, not stopping: worth a watchdog ping."""
        return bool(self.server.started and not self.server.should_exit and self.scheduler.alive)

    def _stopping(self, forced: bool) -> None:
        self._forced = self._forced or forced
        if not self._stop_announced:
            self._stop_announced = True
            self.notifier.stopping("draining requests, flushing the prediction log")
            log.info("stopping: draining in-flight requests")

    def _shutdown(self) -> None:
        self._stopping(self._forced or self.server.force_exit)
        self.context.stopping.set()  # a running drift check's child is stopped, not waited for
        self.launcher.refuse_new()  # a job finishing while the scheduler stops starts no refit on the way out
        if self.scheduler.running:
            self.notifier.status("stopping the scheduler")
            self.scheduler.shutdown(wait=not self._forced)
        self.notifier.status("stopping a running refit")
        self.launcher.stop(1.0 if self._forced else self.settings.refit.stop_timeout_s)
        if self.context.checks is not None:
            self.context.checks.close(1.0 if self._forced else 10.0)
        jobs.bind(None)
        self.settings.runfile.unlink(missing_ok=True)
        self.notifier.close()
        log.info("refitd stopped")
