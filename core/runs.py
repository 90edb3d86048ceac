"""Refit-run rows: one per training flow run, from start to verdict.

A run records the process that runs it (``params["process"]``: machine, boot, pid namespace, pid and start
time, :func:`process_identity`). A row still "running" whose process is gone (killed with the daemon, the OOM
killer, a reboot) would otherwise say "running" forever; :func:`gone` tells from /proc — only for a process
of this machine and pid namespace, and a pid taken since by another process is told by its start time — and
:func:`close_gone` marks such rows failed.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from refitd.core import registry
from refitd.core.db import db_now
from refitd.core.errors import NotFoundError
from refitd.core.tables import RefitRun


def start_run(session: Session, *, trigger: str, params: dict[str, Any], flow_run_id: str | None = None) -> RefitRun:
    """Record that a run has started."""
    run = RefitRun(trigger=trigger, status="running", params=params, flow_run_id=flow_run_id,
                   created_at=db_now(session))  # the cooldown compares it with the scheduler host's decisions
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
    run.finished_at = db_now(session)  # the clock its created_at was read from
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


def process_identity() -> dict[str, Any] | None:
    """This process as the kernel knows it, for :func:`gone`: the machine (hostname and machine id), its boot,
    its pid namespace, the pid and its start time in clock ticks after boot (not a wall clock: immune to
    clock steps). None where /proc cannot tell (not Linux)."""
    try:
        return {"host": socket.gethostname(), "machine": _machine_id(), "boot": _read(_BOOT_ID),
                "pidns": os.stat("/proc/self/ns/pid").st_ino, "pid": os.getpid(), "start": _proc_stat("self")[1]}
    except (OSError, ValueError, IndexError):
        return None


def gone(run: RefitRun) -> str | None:
    """Why ``run``'s process is known to have ended, else None: it lives, or it ran where this process cannot
    see it (another machine, another container's pid namespace), or the row recorded no process.

    The same boot id is the same running kernel: the process is judged by pid namespace, pid and start time
    (whatever the hostname says now). Another boot of this very machine (same hostname and a machine id) means
    it ended with the reboot; another boot without a machine id to tell is another machine, not judged."""
    recorded, here = (run.params or {}).get("process"), process_identity()
    if not isinstance(recorded, dict) or here is None:
        return None
    who = f"its process {recorded.get('host')}:{recorded.get('pid')}"
    if recorded.get("boot") != here["boot"]:
        same_machine = bool(here["machine"]) and recorded.get("machine") == here["machine"] \
            and recorded.get("host") == here["host"]
        return f"{who} has ended (the host restarted since)" if same_machine else None
    if recorded.get("pidns") != here["pidns"]:
        return None  # another pid namespace (a container) on this kernel: its pids are not ours
    try:
        pid = int(recorded["pid"])
        state, start = _proc_stat(pid)
    except FileNotFoundError:
        return f"{who} has ended" if _no_such_process(pid) else None
    except (OSError, ValueError, IndexError, KeyError, TypeError):
        return None
    if state == "Z":  # ended, not yet reaped by its parent
        return f"{who} has ended"
    if start != recorded.get("start"):
        return f"{who} has ended (the pid now belongs to another process)"
    return None


def alive_here(run: RefitRun) -> int | None:
    """The pid of ``run``'s process when it is known to be running on this kernel and in this pid namespace
    (the same pid with the same start time); None when it has ended, or runs where this process cannot see."""
    recorded, here = (run.params or {}).get("process"), process_identity()
    if not isinstance(recorded, dict) or here is None:
        return None
    if recorded.get("boot") != here["boot"] or recorded.get("pidns") != here["pidns"]:
        return None
    try:
        pid = int(recorded["pid"])
        state, start = _proc_stat(pid)
    except (OSError, ValueError, IndexError, KeyError, TypeError):
        return None
    return pid if state != "Z" and start == recorded.get("start") else None


def orphans_here(session: Session) -> list[tuple[int, int, datetime]]:
    """Refits recorded as running whose process runs on this host, oldest first: (run id, pid, started). Asked
    by whoever holds, or found free, the refit lease, each is a refit nobody follows: a child lives on in its own
    session when what started it (`refitd refit`, a daemon outside the unit's KillMode) was killed or lost its
    lease, and a new refit would train beside it."""
    runs = session.exec(select(RefitRun).where(RefitRun.status == "running").order_by(col(RefitRun.id)))
    return [(run.id, pid, run.created_at) for run in runs if (pid := alive_here(run)) is not None]  # type: ignore[misc]


def orphan_here(session: Session) -> str | None:
    """Why no refit may start while one nobody follows runs on this host (:func:`orphans_here`), else None."""
    found = orphans_here(session)
    if not found:
        return None
    run_id, pid, _ = found[-1]
    return (f"refit run {run_id} is still running on this host (pid {pid}) though nothing holds the refit lease "
            "(what started it has ended); `kill` it to refit sooner")


def _no_such_process(pid: int) -> bool:
    """No /proc entry can also mean hidden (``hidepid``, ``ProtectProc=invisible``): ask the kernel."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: it lives, as another user's
        return False
    return False


def close_gone(session: Session) -> list[RefitRun]:
    """Mark failed, each with a ``refit_failed`` event in the same transaction, every run still "running"
    whose process has ended without recording an outcome; returns them."""
    closed = []
    for run in list(session.exec(select(RefitRun).where(RefitRun.status == "running").order_by(col(RefitRun.id)))):
        why = gone(run)
        if why is None:
            continue
        # read again, locked, once the process is known gone: it may have finished its row just before, or
        # another caller closed it meanwhile (it waits here for that one's commit and then skips the row)
        session.refresh(run, with_for_update=True)
        if run.status != "running":
            continue
        reason = f"{why} without recording an outcome (killed, or the host restarted)"
        closed.append(finish_run(session, run_id=run.id, status="failed", reason=reason))  # type: ignore[arg-type]
        registry.record_event(session, kind="refit_failed", subject=None, actor="daemon",
                              reason=f"refit run {run.id} ({run.trigger}) failed: {reason}",
                              data={"run_id": run.id, "trigger": run.trigger, "status": "failed", "reason": reason})
    return closed


def running_here(session: Session, pid: int) -> RefitRun | None:
    """The newest run still marked running that process ``pid`` of this kernel and pid namespace recorded;
    where /proc cannot tell (not Linux: runs record no process), the newest run still marked running."""
    here = process_identity()
    if here is None:
        return running(session)
    for run in session.exec(select(RefitRun).where(RefitRun.status == "running").order_by(col(RefitRun.id).desc())):
        recorded = (run.params or {}).get("process")
        if isinstance(recorded, dict) and recorded.get("pid") == pid and \
                all(recorded.get(key) == here[key] for key in ("boot", "pidns")):
            return run
    return None


def list_runs(session: Session, *, limit: int = 20) -> list[RefitRun]:
    """Runs, newest first."""
    return list(session.exec(select(RefitRun).order_by(col(RefitRun.id).desc()).limit(limit)))


_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _machine_id() -> str:
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            return _read(path)
        except OSError:
            continue
    return ""


def _proc_stat(pid: int | str) -> tuple[str, int]:
    """A process's state letter and start time (clock ticks after boot) from /proc/PID/stat."""
    raw = _read(f"/proc/{pid}/stat")
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) ": field 3 (state) on; comm may hold spaces
    return fields[0], int(fields[19])  # field 22: starttime
