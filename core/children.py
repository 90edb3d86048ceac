"""How every process starts a child: ``python -m MODULE --settings FILE [--result-file R] [--nice N] ARGS…``.

Two kinds of child, both started by name so the parent imports none of their code: a training flow,
``python -m refitd.flows … init|refit`` (the CLI, the daemon's launcher, the demo and the benchmarks;
none of them imports torch), and a drift check, ``python -m refitd.daemon.drift`` (the daemon, so the
serving process never holds pandas/Evidently memory nor competes for the GIL). Settings travel by one
channel: the parent's validated :class:`Settings` are written to a 0600 JSON file (secrets included)
that the child validates again with :func:`read_settings` and deletes once read; the child consults no
TOML file and no ``REFITD_*`` variable for settings, and inherits none. What the child does is in the arguments; how it
does it is in the settings. Its budget is the parent's choice: a thread count (OpenMP, MKL, OpenBLAS,
Rayon) and a niceness the child applies to itself first (``--nice``: no ``preexec_fn`` in a threaded
parent). It writes a JSON summary to its result file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refitd.core.errors import ConfigError, RefitdError
from refitd.core.settings import Settings

FLOWS = "refitd.flows"
DRIFT_CHECK = "refitd.daemon.drift"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")

log = logging.getLogger(__name__)


class ChildFailed(RefitdError):
    """A child process that exited with an error, died, or ran past its timeout."""

    exit_code = 1

    def __init__(self, what: str, code: int, error: str | None) -> None:
        super().__init__(f"{what}: {error or f'its process exited with {code}'}")
        self.code = code


@dataclass
class Child:
    """A prepared child process: its command line, environment and the files it reads and writes."""

    argv: list[str]
    env: dict[str, str]
    settings_file: Path
    result_file: Path

    def result(self) -> dict[str, Any]:
        """The child's JSON summary, or {} when it wrote none (it died first)."""
        try:
            text = self.result_file.read_text()
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {}

    def cleanup(self) -> None:
        """Remove the settings file (if the child never read it) and the result file."""
        for path in (self.settings_file, self.result_file):
            path.unlink(missing_ok=True)


def prepare(settings: Settings, args: list[str], *, module: str = FLOWS, threads: int | None = None,
            niceness: int = 0) -> Child:
    """Write the settings file and build the command for ``python -m MODULE ARGS``."""
    settings.home.mkdir(parents=True, exist_ok=True)
    kind = module.rsplit(".", 1)[-1]
    fd, name = tempfile.mkstemp(prefix=f".{kind}-settings-", suffix=".json", dir=settings.home)  # 0600
    with os.fdopen(fd, "w") as handle:
        handle.write(settings.to_json())
    fd, result = tempfile.mkstemp(prefix=f".{kind}-result-", suffix=".json", dir=settings.home)
    os.close(fd)
    argv = [sys.executable, "-m", module, "--settings", name, "--result-file", result]
    if niceness:
        argv += ["--nice", str(int(niceness))]
    # The settings (secrets included) travel only in the file: no REFITD_* variable, nor its *_FILE
    # pointer, is passed on, so a database password never sits in a child's /proc/PID/environ.
    env = {name: value for name, value in os.environ.items() if not name.upper().startswith("REFITD_")}
    env["REFITD_PROGRESS"] = "0"  # the child's output goes to a log: no progress-bar debris
    env["TOKENIZERS_PARALLELISM"] = "false"
    if threads:
        env |= dict.fromkeys(THREAD_VARIABLES, str(threads))
    return Child(argv + args, env, Path(name), Path(result))


def run(settings: Settings, args: list[str], *, log_file: Path | None, module: str = FLOWS,
        threads: int | None = None, niceness: int = 0, timeout_s: float | None = None,
        cancel: threading.Event | None = None, stop_timeout_s: float = 10.0) -> tuple[int, dict[str, Any]]:
    """Run a child to the end; (exit code, JSON summary). Its output goes to ``log_file`` (None: this
    process's stdout/stderr). Past ``timeout_s``, or once ``cancel`` is set, it is stopped (SIGTERM, SIGKILL
    after ``stop_timeout_s``) and the summary says why."""
    child = prepare(settings, args, module=module, threads=threads, niceness=niceness)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        with open(log_file, "ab") if log_file is not None else nullcontext() as log_handle, _signals_raise():
            process = spawn(child, stdout=log_handle,
                            stderr=subprocess.STDOUT if log_handle is not None else None)
            try:
                while True:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    step = left if cancel is None else min(0.5, 0.5 if left is None else left)
                    code = wait(process, step)
                    if code is not None:
                        return code, child.result()
                    why = ("cancelled" if cancel is not None and cancel.is_set() else
                           f"timed out after {timeout_s:g} s" if left == 0.0 else None)
                    if why is not None:
                        log.warning("stopping %s process %s: %s", module, process.pid, why)
                        stop(process, stop_timeout_s)
                        return process.returncode, {"error": why}
            except BaseException:  # interrupted while waiting: leave no orphan behind
                stop(process, stop_timeout_s)
                raise
    finally:
        child.cleanup()


def spawn(child: Child, **popen: Any) -> subprocess.Popen:
    """Start a prepared child as the leader of its own process group, so that whatever it starts in turn
    (Prefect's local API server, data loader workers) can be stopped with it: see :func:`wait`."""
    return subprocess.Popen(child.argv, env=child.env, start_new_session=True, **popen)


def wait(process: subprocess.Popen, timeout_s: float | None) -> int | None:
    """The child's exit code once it has exited (None if it is still running after ``timeout_s``; 0 polls).

    When it has exited, what is left of its process group is SIGKILLed first, while the exited leader is
    still a zombie: its id, and so the group's, cannot have been reused yet. A child killed before it could
    stop its own helpers (SIGKILL, the OOM killer) would otherwise leave them orphaned, holding ports and
    memory. Each group is swept once: a child already waited for returns its code."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    delay = 0.001
    while process.returncode is None:
        try:
            exited = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # waited for elsewhere in the meantime: poll() records it
            process.poll()
            continue
        if exited is not None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass  # nothing left of the group
            return process.wait()
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic())))
        delay = min(delay * 2, 0.05)
    return process.returncode


def stop(process: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM to the child, then SIGKILL after ``timeout_s``; returns once it is gone, its group swept."""
    if wait(process, 0) is not None:
        return
    process.terminate()
    if wait(process, timeout_s) is None:
        process.kill()
        wait(process, None)


@contextmanager
def _signals_raise() -> Iterator[None]:
    """While a child runs in the foreground of the main thread, SIGTERM and SIGHUP to this process (a closed
    terminal, ``timeout``, a CI runner stopping the job) raise, so the child is stopped with it: in its own
    process group it no longer receives the signals a terminal sends. Ctrl-C already raises."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_exit(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, raise_exit) for sig in (signal.SIGTERM, signal.SIGHUP)
                if signal.getsignal(sig) == signal.SIG_DFL}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def read_settings(path: Path) -> Settings:
    """In the child: the settings its parent handed over, validated again; the file is deleted once read."""
    try:
        return Settings.from_json(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the settings file {path}: {exc.strerror}") from None
    finally:
        path.unlink(missing_ok=True)  # it holds secrets; nobody needs it after this


def write_result(path: Path | None, result: dict[str, Any]) -> str:
    """In the child: the JSON summary, to the result file when there is one; returns the line."""
    line = json.dumps(result, default=str)
    if path is not None:
        path.write_text(line)
    return line


def child_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The options every child entry point takes: the handed-over settings, a result file, a niceness."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--settings", type=Path, required=True,
                   help="settings JSON written by refitd.core.children (validated again, deleted once read)")
    p.add_argument("--result-file", type=Path, default=None, help="write the JSON summary here too")
    p.add_argument("--nice", type=int, default=0, help="lower this process's CPU priority first")
    return p

