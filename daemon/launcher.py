"""Starting refits by name and following them to their outcome; at most one at a time, across processes.

Locally a refit is a child process, ``python -m refitd.flows refit --trigger X``, at a lower
CPU priority and a capped thread count so serving stays responsive. With
``prefect.api_url`` and ``prefect.deployment`` set, it is a run of that deployment
(a worker on another host runs it). Either way the ``refit`` lease is held, and
renewed, for as long as the run is going, and its outcome is read back from the
refit-run row (and the Prefect state for a deployment).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from refitd.core import children, leases, registry
from refitd.core.children import Child
from refitd.core.db import db_now, session_scope
from refitd.core.runs import close_gone, finish_run, orphan_here, orphans_here, running, running_here
from refitd.core.settings import Settings
from refitd.core.tables import Event, RefitRun

log = logging.getLogger(__name__)

LEASE = leases.REFIT
_TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class Launch:
    """One refit in flight."""

    trigger: str
    reason: str
    started: float = field(default_factory=time.monotonic)
    process: subprocess.Popen | None = None
    child: Child | None = None
    flow_run_id: str | None = None


def _deployment_run(session: Session) -> tuple[str, int | None, datetime] | None:
    """The deployment run a refit decision must wait for: the flow run of the newest row still marked running,
    else the newest launch whose flow run wrote no row yet; its id, its row's id and when it was started."""
    run = running(session)
    if run is not None and run.flow_run_id:
        return run.flow_run_id, run.id, run.created_at
    launched = session.exec(select(Event).where(Event.kind == "refit_started")
                            .order_by(col(Event.id).desc())).first()
    flow_run_id = ((launched.data or {}).get("flow_run_id") if launched is not None else None)
    if not flow_run_id or session.exec(select(RefitRun.id).where(RefitRun.flow_run_id == flow_run_id)).first():
        return None
    return str(flow_run_id), None, launched.created_at  # type: ignore[union-attr]


class RefitLauncher:
    """Starts a refit when the lease is free, follows it, records what happened as events."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings, self.engine = settings, engine
        self.holder = f"{leases.holder_name()}:refit"
        self.launch: Launch | None = None
        self.finished: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    # -- starting -------------------------------------------------------------------------

    def refuse_new(self) -> None:
        """From the start of a shutdown: no refit starts (a job still running may decide to start one), while
        one already running is still followed until :meth:`stop`."""
        self._closing.set()

    def busy(self) -> str | None:
        """Why a refit cannot start now (the daemon is stopping, another is running here or elsewhere), else None."""
        if self._stop.is_set() or self._closing.is_set():
            return "the daemon is shutting down"
        if self.launch is not None:
            return f"a refit started by {self.launch.trigger} is already running in this daemon"
        self.close_gone()
        held = leases.current(self.engine, LEASE)
        if held is not None:
            return f"a refit is already running (lease held by {held.holder} until {held.expires_at:%H:%M:%S})"
        return self._unfollowed_flow_run() or self._orphan_here()

    def _orphan_here(self) -> str | None:
        """Why not, while a refit nobody follows runs on this host; one past ``refit.timeout_minutes`` is stopped
        (its process group, as the daemon stops its own child), and a later decision closes its row."""
        limit = timedelta(minutes=self.settings.refit.timeout_minutes)
        with session_scope(self.engine) as session:
            found, now = orphans_here(session), db_now(session)  # a run's row is stamped by the database's clock
        waiting = []
        for run_id, pid, started in found:
            if now - started <= limit:
                waiting.append((run_id, pid))
                continue
            reason = f"refit run {run_id} (pid {pid}) timed out: running {limit} with nobody following it; stopped"
            try:
                os.killpg(pid, signal.SIGTERM)  # a refit child leads its own session: its group is its pid
            except OSError as exc:
                log.warning("could not stop %s: %s", reason, exc)
                waiting.append((run_id, pid))
                continue
            self._event("refit_failed", reason, {"run_id": run_id, "status": "failed", "reason": reason})
        if not waiting:
            return None
        with session_scope(self.engine) as session:
            return orphan_here(session)

    def close_gone(self) -> None:
        """Rows left "running" by refits whose process ended without an outcome (killed with an earlier daemon,
        a reboot) are marked failed, each with an event, so status stops showing them running. A failure here
        is logged, never passed on: a stale row misleads status, and must not stop a refit decision."""
        try:
            with session_scope(self.engine) as session:
                closed = [(run.id, run.reason) for run in close_gone(session)]
        except Exception:  # noqa: BLE001 - see above
            log.exception("could not close refit runs whose process has ended")
            return
        for run_id, reason in closed:
            log.warning("refit run %s marked failed: %s", run_id, reason)

    def _unfollowed_flow_run(self) -> str | None:
        """Why not, when a deployment run still runs, or waits, on its work pool with nobody following it (the
        daemon that started it restarted, and its lease lapsed): a new refit would run beside it. The run is the
        one recorded as running, else the newest launch whose run has not written its row yet (pending while no
        worker takes it). One whose flow run ended without recording an outcome (crashed) is marked failed; one
        past ``refit.timeout_minutes`` is cancelled on the pool, as the daemon that started it would have."""
        if not self.settings.prefect.deployment:
            return None
        with session_scope(self.engine) as session:
            found, now = _deployment_run(session), db_now(session)  # the worker's row, by the database's clock
        if found is None:
            return None
        flow_run_id, run_id, since = found
        what = f"deployment flow run {flow_run_id} ({f'refit run {run_id}' if run_id else 'no refit run row yet'})"
        from prefect.exceptions import ObjectNotFound

        try:
            state, message = self._flow_run_state(flow_run_id)
        except ObjectNotFound:  # not a run of this API (a refit started by hand, with its own Prefect): not ours
            return None
        except Exception as exc:  # noqa: BLE001 - unknown is not free: wait for the next decision
            return f"cannot read the state of {what} from Prefect: {exc}"
        if state in _TERMINAL or state == "CANCELLING":  # cancelling: asked already, by this decision or its daemon
            if run_id is not None and state != "CANCELLING":
                self._mark_failed(f"its flow run ended {state} without recording an outcome: {message}", flow_run_id)
            return None
        limit = self.settings.refit.timeout_minutes
        if now - since <= timedelta(minutes=limit):
            return f"{what} is still {state.lower()} on its work pool"
        why = f"timed out: {state.lower()} {limit:g} minutes after it was started, with nobody following it"
        self._cancel_flow_run(flow_run_id, why)
        self._mark_failed(why, flow_run_id)
        self._event("refit_failed", f"{what} {why}; cancelled on its work pool",
                    {"flow_run_id": flow_run_id, "status": "failed", "reason": why})
        return None

    def start(self, trigger: str, reason: str) -> tuple[bool, str]:
        """Take the lease and launch; (False, why) when the lease is taken."""
        with self._lock:
            why = self.busy()
            if why is None and not leases.acquire(self.engine, LEASE, holder=self.holder,
                                                  ttl_s=self.settings.refit.lease_s, data={"trigger": trigger}):
                why = "a refit is already running (another process took the lease first)"
            if why is not None:
                return False, why
            launch = Launch(trigger, reason)
            try:
                if self.settings.prefect.deployment:
                    launch.flow_run_id = self._run_deployment(trigger)
                else:
                    launch.process, launch.child = self._spawn(trigger)
            except Exception:
                leases.release(self.engine, LEASE, holder=self.holder)
                raise
            self.launch = launch
        where = f"deployment {self.settings.prefect.deployment}, flow run {launch.flow_run_id}" \
            if launch.flow_run_id else f"local process {launch.process.pid}"  # type: ignore[union-attr]
        self._ensure_follower()  # first: a failed event row must not leave a refit nobody follows
        self._event("refit_started", f"{reason}; running as {where}", {"trigger": trigger,
                                                                      "flow_run_id": launch.flow_run_id})
        return True, where

    def _spawn(self, trigger: str) -> tuple[subprocess.Popen, Child]:
        s = self.settings
        threads = s.refit.threads
        child = children.prepare(s.updated({"training": {"threads": threads}}),
                                 ["refit", "--trigger", trigger] + (["--quick"] if s.refit.quick else []),
                                 threads=threads, niceness=s.refit.nice)
        try:
            with open(s.home / "refit.log", "ab") as log_file:
                process = children.spawn(child, stdout=log_file, stderr=subprocess.STDOUT)
        except OSError:
            child.cleanup()
            raise
        log.info("refit started: pid %s, nice %s, %s threads (log: %s)", process.pid, s.refit.nice, threads,
                 s.home / "refit.log")
        return process, child

    def _prefect(self):  # type: ignore[no-untyped-def]
        """Prefect's client settings pointed at the configured API, for this call only."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        return temporary_settings({PREFECT_API_URL: self.settings.prefect.api_url})

    def _run_deployment(self, trigger: str) -> str:
        from prefect.deployments import run_deployment

        with self._prefect():
            flow_run = run_deployment(self.settings.prefect.deployment,
                                      parameters={"trigger": trigger, "quick": self.settings.refit.quick}, timeout=0)
        return str(flow_run.id)

    # -- following ------------------------------------------------------------------------

    def _ensure_follower(self) -> None:
        with self._lock:  # the follower leaves under this lock too: a launch never lands between its last look and its exit
            if self._thread is None:
                self._thread = threading.Thread(target=self._follow, name="refit-follower", daemon=True)
                self._thread.start()

    def _follow(self) -> None:
        while True:
            with self._lock:
                if self._stop.is_set() or self.launch is None:
                    self._thread = None
                    return
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - following must outlive a database hiccup
                log.exception("could not follow the running refit")
            self._stop.wait(min(2.0, self.settings.prefect.poll_s) if self.launch and self.launch.process
                            else self.settings.prefect.poll_s)

    def poll(self) -> dict[str, Any] | None:
        """Renew the lease while running; on the end, record the outcome and free the lease (once)."""
        with self._poll_lock:
            return self._poll()

    def _poll(self) -> dict[str, Any] | None:
        launch = self.launch
        if launch is None:
            return None
        elapsed = time.monotonic() - launch.started
        if elapsed > self.settings.refit.timeout_minutes * 60:
            self._terminate(launch, f"timed out after {self.settings.refit.timeout_minutes:g} minutes")
            return self._close(launch, {"status": "failed", "reason": "timed out"})
        state = self._state(launch)
        if state is None:
            if not leases.renew(self.engine, LEASE, holder=self.holder, ttl_s=self.settings.refit.lease_s):
                log.error("the refit lease was lost (expired, or taken by %s); another refit may start beside this one",
                          getattr(leases.current(self.engine, LEASE), "holder", "nobody"))
            return None
        return self._close(launch, state | {"seconds": round(elapsed, 1)})

    def _state(self, launch: Launch) -> dict[str, Any] | None:
        """None while running, else the outcome."""
        if launch.process is not None:
            code = children.wait(launch.process, 0)  # a refit killed mid-flow leaves no Prefect server behind
            if code is None:
                return None
            summary = launch.child.result() if launch.child is not None else {}
            if code == 0 and "version" in summary:
                return {"status": "completed", "verdict": summary["verdict"], "version": summary["version"],
                        "reason": summary["reason"]}
            return {"status": "failed", "reason": summary.get("error") or f"refit process exited with {code}",
                    "exit_code": code}
        state, message = self._flow_run_state(launch.flow_run_id)  # type: ignore[arg-type]
        if state not in _TERMINAL:
            return None
        row = self._row(flow_run_id=launch.flow_run_id)
        if state == "COMPLETED" and row is not None:
            return {"status": "completed", "verdict": row.verdict, "version": row.candidate_version, "reason": row.reason}
        return {"status": "failed", "reason": f"Prefect state {state}: {message}"}

    def _flow_run_state(self, flow_run_id: str) -> tuple[str, str]:
        """A deployment flow run's state type (PENDING, RUNNING, COMPLETED, …) and its message."""
        from prefect.client.orchestration import get_client

        with self._prefect(), get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(flow_run_id)
        if flow_run.state is None:
            return "PENDING", ""
        return flow_run.state.type.value, flow_run.state.message or ""

    def _row(self, *, flow_run_id: str | None) -> RefitRun | None:
        with session_scope(self.engine) as session:
            query = select(RefitRun).order_by(col(RefitRun.id).desc())
            return session.exec(query.where(RefitRun.flow_run_id == flow_run_id) if flow_run_id else query).first()

    def _close(self, launch: Launch, outcome: dict[str, Any]) -> dict[str, Any]:
        """Record the outcome, then free the launch: whoever sees ``launch`` None finds the outcome
        in ``finished`` and its event in the database. A failed write leaves the launch in place,
        and the next poll records it again."""
        outcome |= {"trigger": launch.trigger}
        if outcome["status"] == "completed":
            self._event("refit_finished", f"{outcome['version']} {outcome['verdict']}: {outcome['reason']}", outcome,
                        subject=outcome["version"])
        else:
            self._mark_failed(outcome["reason"], launch.flow_run_id,
                              launch.process.pid if launch.process is not None else None)
            self._event("refit_failed", f"refit ({launch.trigger}) failed: {outcome['reason']}", outcome)
        with self._lock:
            self.finished.append(outcome)
            self.launch = None
            try:
                leases.release(self.engine, LEASE, holder=self.holder)
            except Exception:  # noqa: BLE001 - the outcome is recorded; an unreleased lease expires on its own
                log.exception("could not release the refit lease; it expires in %s s", self.settings.refit.lease_s)
        if launch.child is not None:
            launch.child.cleanup()
        return outcome

    # -- stopping -------------------------------------------------------------------------

    def stop(self, timeout_s: float | None = None) -> None:
        """On shutdown: stop a local refit (SIGTERM, then SIGKILL after the timeout) and free the lease."""
        with self._lock:  # a start already past its checks finishes first, and is stopped below
            self._stop.set()
            launch = self.launch
        if launch is None:
            return
        if launch.process is not None:
            with self._poll_lock:
                if self.launch is not launch:  # it ended while we were getting here
                    return
                self._terminate(launch, "the daemon is shutting down", timeout_s)
                self._close(launch, {"status": "failed", "reason": "stopped: the daemon shut down"})
        else:  # a deployment run goes on without us; the lease expires if nobody renews it
            log.info("leaving deployment flow run %s to its worker", launch.flow_run_id)

    def _terminate(self, launch: Launch, why: str, timeout_s: float | None = None) -> None:
        if launch.flow_run_id is not None:
            self._cancel_flow_run(launch.flow_run_id, why)
        if launch.process is None:
            return
        if launch.process.returncode is None:
            log.warning("stopping refit process %s: %s", launch.process.pid, why)
        children.stop(launch.process, timeout_s or self.settings.refit.stop_timeout_s)  # sweeps its group either way

    def _cancel_flow_run(self, flow_run_id: str, why: str) -> None:
        """Ask Prefect to cancel a deployment run (its worker stops the flow's process): a run past its time
        must not go on, and maybe promote, after its lease is freed for the next refit."""
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelling

        log.warning("cancelling deployment flow run %s: %s", flow_run_id, why)
        try:
            with self._prefect(), get_client(sync_client=True) as client:
                client.set_flow_run_state(flow_run_id, Cancelling(message=why), force=True)
        except Exception:  # noqa: BLE001 - recorded as failed either way; say it may still be running
            log.exception("could not cancel flow run %s; it may still be running on its work pool", flow_run_id)

    def _mark_failed(self, reason: str, flow_run_id: str | None = None, pid: int | None = None) -> None:
        """Finish the run row still marked running: the deployment run's own row when its id is known, the row
        the local child ``pid`` recorded (another refit's row must not take this one's failure), else the newest."""
        with session_scope(self.engine) as session:
            if flow_run_id:
                run = self._row(flow_run_id=flow_run_id)
            elif pid is not None:
                run = running_here(session, pid)
            else:
                run = running(session)
            if run is not None and run.status == "running":
                finish_run(session, run_id=run.id, status="failed", reason=reason)  # type: ignore[arg-type]

    def _event(self, kind: str, reason: str, data: dict[str, Any], subject: str | None = None) -> None:
        log.info("%s: %s", kind, reason)
        with session_scope(self.engine) as session:
            registry.record_event(session, kind=kind, subject=subject, reason=reason, actor="daemon",
                                  data=json.loads(json.dumps(data, default=str)))


