"""The daemon's drift-check process, kept between checks.

A check is mostly imports: profiled on a default demo's home, ~7 of a check's ~9.4 CPU seconds went to
importing Evidently, pandas and the check's own modules, ~2 to the check. So the daemon keeps one check
process (``python -m refitd.daemon.drift --serve``, started like every child by refitd.core.children:
settings in a 0600 file, ``drift.threads`` threads, ``drift.nice``) that imports once and runs a check for
each line it is sent, answering with the check's summary line. After ``drift.process_checks`` checks it is
retired (stdin closed: it exits) and the next check starts a fresh one, which bounds what a long-lived
Python heap can gather. A check that outlives ``drift.timeout_minutes``, or the daemon shutting down,
stops the process and its group; one that exited between checks (killed, out of memory) is replaced at
the next check. If the daemon dies, the process reads the end of its stdin and exits after its check.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import subprocess
import threading
import time
from typing import Any

from refitd.core import children
from refitd.core.children import Child
from refitd.core.settings import Settings

log = logging.getLogger(__name__)


class CheckProcess:
    """One long-lived check process; :meth:`run` is one check, one at a time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._child: Child | None = None
        self._checks = 0
        self._closed = False

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def run(self, *, timeout_s: float, cancel: threading.Event | None = None,
            stop_timeout_s: float = 10.0) -> tuple[int, dict[str, Any]]:
        """One check in the kept process (started first when there is none): (exit code, summary), as
        :func:`refitd.core.children.run` returns them for a process of its own. Once :meth:`close` was
        called, or ``cancel`` is set, no process is started: the check is "cancelled"."""
        with self._lock:
            if self._closed or (cancel is not None and cancel.is_set()):
                return 1, {"error": "cancelled"}
            if self._process is not None and children.wait(self._process, 0) is not None:
                log.warning("the drift-check process %s had exited (%s); starting another",
                            self._process.pid, self._process.returncode)
                self._drop()
            if self._process is None:
                self._start()
            process = self._process
            assert process is not None
            try:
                line, why = _ask(process, timeout_s, cancel)
                if line is None:
                    if why is not None:
                        log.warning("stopping the drift-check process %s: %s", process.pid, why)
                    children.stop(process, 1.0 if self._closed else stop_timeout_s)
                    code = process.returncode if process.returncode is not None else 1
                    self._drop()
                    return code, {"error": why} if why else {}
                result = json.loads(line)
            except BaseException:  # a garbled answer, or interrupted: the process is in an unknown state
                children.stop(process, 1.0)
                self._drop()
                raise
            self._checks += 1
            if self._checks >= self.settings.drift.process_checks:
                self._retire()
            return int(result.pop("exit_code", 0) or 0), result

    def close(self, timeout_s: float = 10.0) -> None:
        """Retire the process (stdin closed, so it exits once a running check is done; stopped after
        ``timeout_s``)."""
        self._closed = True  # a check waiting for the lock will not start another process
        with self._lock:
            self._retire(timeout_s)

    def _start(self) -> None:
        d = self.settings.drift
        self._child = children.prepare(self.settings.updated({"serving": {"threads": d.threads}}), ["--serve"],
                                       module=children.DRIFT_CHECK, threads=d.threads, niceness=d.nice)
        self._child.result_file.unlink(missing_ok=True)  # answers come down the pipe
        try:
            self._process = children.spawn(self._child, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        except OSError:
            self._drop()
            raise
        self._checks = 0
        log.info("drift-check process started: pid %s, nice %s, %s thread(s), retired after %s checks",
                 self._process.pid, d.nice, d.threads, d.process_checks)

    def _retire(self, timeout_s: float = 10.0) -> None:
        process = self._process
        if process is None:
            return
        try:
            assert process.stdin is not None
            process.stdin.close()
        except OSError:
            pass
        if children.wait(process, timeout_s) is None:
            children.stop(process, 5.0)
        self._drop()

    def _drop(self) -> None:
        for pipe in (self._process.stdin, self._process.stdout) if self._process is not None else ():
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
        if self._child is not None:
            self._child.cleanup()
        self._process, self._child, self._checks = None, None, 0


def _ask(process: subprocess.Popen, timeout_s: float, cancel: threading.Event | None) -> tuple[bytes | None, str | None]:
    """Send one check request and read its answer line, as :func:`_read_line` returns it."""
    assert process.stdin is not None and process.stdout is not None
    try:
        process.stdin.write(b"check\n")
        process.stdin.flush()
    except OSError as exc:  # its stdin closed under us: it died
        log.warning("the drift-check process %s: %s", process.pid, exc)
        return None, None
    return _read_line(process.stdout.fileno(), timeout_s, cancel)


def _read_line(fd: int, timeout_s: float, cancel: threading.Event | None) -> tuple[bytes | None, str | None]:
    """A line from ``fd``, or (None, why): timed out, cancelled, or (None, None) at its end (the process died).
    An answer already written wins over a cancel or a deadline that came with it."""
    deadline, buffer = time.monotonic() + timeout_s, b""
    with selectors.DefaultSelector() as selector:  # poll/epoll: no FD_SETSIZE limit on the descriptor
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in buffer:
            left = deadline - time.monotonic()
            stopping = cancel is not None and cancel.is_set()
            if selector.select(0 if stopping or left <= 0 else min(0.5, left)):
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None, None
                buffer += chunk
                continue
            if stopping:
                return None, "cancelled"
            if left <= 0:
                return None, f"timed out after {timeout_s:g} s"
    return buffer.split(b"\n", 1)[0], None
