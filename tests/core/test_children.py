"""How a child is started: settings handed over in a 0600 file, read once, a thread budget and a niceness."""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path

from refitd.core import children
from refitd.core.settings import Settings


def test_default_settings_survive_the_handover_and_the_file_is_gone_once_read(tmp_path: Path,
                                                                              monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("REFITD_DATABASE__URL", "postgresql+psycopg://refitd:hunter2@db.example/refitd")
    settings = Settings.load(home=tmp_path, drift={"webhook_url": "https://hooks.example/secret"})
    assert "hunter2" in settings.database.url.get_secret_value()
    child = children.prepare(settings, ["--flag"], module=children.DRIFT_CHECK, threads=2, niceness=7)
    assert not any("hunter2" in value for value in child.env.values())  # the secret travels in the file only
    assert child.env["REFITD_PROGRESS"] == "0" and child.env["PATH"]
    assert stat.S_IMODE(child.settings_file.stat().st_mode) == 0o600
    assert child.argv[1:3] == ["-m", "refitd.daemon.drift"] and child.argv[-3:] == ["--nice", "7", "--flag"]
    assert {child.env[v] for v in children.THREAD_VARIABLES} == {"2"}
    got = children.read_settings(child.settings_file)
    assert got == settings and got.drift.webhook_url.get_secret_value() == "https://hooks.example/secret"
    assert "hunter2" in got.database.url.get_secret_value()
    assert not child.settings_file.exists()
    child.cleanup()


def test_a_child_that_outlives_its_timeout_is_stopped(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    code, result = children.run(Settings.load(home=tmp_path), [], module="refitd.core.nonexistent", log_file=None)
    assert code != 0 and result == {}
    (tmp_path / "sleeper").mkdir()
    (tmp_path / "sleeper" / "__main__.py").write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    code, result = children.run(Settings.load(home=tmp_path), [], module="sleeper", log_file=tmp_path / "log",
                                timeout_s=1.0, stop_timeout_s=1.0)
    assert code == -15 and result == {"error": "timed out after 1 s"}
    assert not list(tmp_path.glob(".sleeper-*"))  # settings and result files removed
    cancel = threading.Event()  # the daemon shutting down: a running child is stopped, not waited for
    threading.Timer(1.0, cancel.set).start()
    started = time.monotonic()
    code, result = children.run(Settings.load(home=tmp_path), [], module="sleeper", log_file=None, timeout_s=60,
                                cancel=cancel, stop_timeout_s=1.0)
    assert code == -15 and result == {"error": "cancelled"} and time.monotonic() - started < 10


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_what_a_child_started_goes_with_it(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A child deaf to SIGTERM is killed; the helper it started (as a flow child starts Prefect's
    local server) must not outlive it, neither when the child is stopped nor when it dies on its own."""
    (tmp_path / "spawner").mkdir()
    (tmp_path / "spawner" / "__main__.py").write_text(
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "helper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(tmp_path / 'helper.pid')!r}, 'w').write(str(helper.pid))\n"
        "time.sleep(120 if sys.argv[-1] == 'hang' else 0.5)\n"
        "import os; os._exit(3)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    for how in ("hang", "die"):
        code, _ = children.run(Settings.load(home=tmp_path), [how], module="spawner", log_file=None,
                               timeout_s=2.0 if how == "hang" else 30, stop_timeout_s=1.0)
        assert code == (-9 if how == "hang" else 3)
        helper = int((tmp_path / "helper.pid").read_text())
        deadline = time.monotonic() + 5
        while _alive(helper) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(helper), f"the helper of a child that was made to {how} outlived it"


def test_a_parent_stopped_by_sigterm_or_sighup_stops_its_child(tmp_path: Path) -> None:
    """In its own process group the child no longer gets what a terminal or a job runner sends the parent's
    group; the parent stops it on its way out."""
    import os
    import signal
    import subprocess
    import sys

    (tmp_path / "sleeper").mkdir()
    (tmp_path / "sleeper" / "__main__.py").write_text(
        "import os, sys, time\n"
        f"open({str(tmp_path / 'child.pid')!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(120)\n")
    # a parent as a terminal starts it: under nohup (SIGHUP ignored, as a test runner may be) it means to outlive
    # a hangup, and the handlers leave an ignored signal ignored
    parent = ("import signal, sys\nsignal.signal(signal.SIGHUP, signal.SIG_DFL)\n"
              "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
              "from pathlib import Path\nfrom refitd.core import children\n"
              "from refitd.core.settings import Settings\n"
              "children.run(Settings.load(home=Path(sys.argv[1])), [], module='sleeper', log_file=None,"
              " stop_timeout_s=2.0)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        (tmp_path / "child.pid").unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", parent, str(tmp_path)], env=env)
        deadline = time.monotonic() + 60
        while not (tmp_path / "child.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        child = int((tmp_path / "child.pid").read_text())
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 128 + sig
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), f"{sig.name} to the parent left its child running"
