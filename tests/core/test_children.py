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
