"""The daemon checks drift in a child process: the serving process never loads Evidently, the child writes
the row, and a failed or hung check is an event while the daemon goes on. The process is kept between
checks, retired after drift.process_checks, replaced when it died, and gone when the daemon is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlmodel import select

from refitd.core import children
from refitd.core.db import make_engine, session_scope, upgrade
from refitd.core.settings import Settings
from refitd.core.tables import DriftCheck, Event
from refitd.daemon import checker, jobs
from refitd.daemon.launcher import RefitLauncher
from tests.artifact_factory import publish_version
from tests.core.test_children import _alive
from tests.daemon.drift.test_report import champion_with_traffic

ROOT = Path(__file__).resolve().parents[3]

JOB = """
import json, os, sys
from refitd.core.db import engine_for
from refitd.core.settings import Settings
from refitd.daemon import jobs
from refitd.daemon.launcher import RefitLauncher
settings = Settings.load(home=sys.argv[1], drift=json.loads(sys.argv[2]))
engine = engine_for(settings)
out = jobs.drift_check(jobs.Context(settings, engine, RefitLauncher(settings, engine)))
print(json.dumps({"out": out, "loaded": [m for m in ("evidently", "sklearn") if m in sys.modules]}))
"""


def test_the_daemon_job_runs_the_check_in_a_child_that_writes_the_row(tmp_path: Path, untrained_artifact: Path) -> None:
    drift = {"window_size": 300, "min_window": 200, "reference_size": 600, "calibration_draws": 1000}
    settings = champion_with_traffic(tmp_path, untrained_artifact, other=0)
    done = subprocess.run([sys.executable, "-c", JOB, str(tmp_path), json.dumps(drift)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    out = result["out"]
    assert result["loaded"] == []  # the daemon's process never imported Evidently or scikit-learn
    assert out["verdict"] == "not_drifted" and out["peak_rss_mb"] > 100, out
    assert out["decision"] == "drift: no refit, the last check was not_drifted"
    with session_scope(make_engine(settings.database_url)) as session:
        row = session.get(DriftCheck, out["check"])
        assert row.verdict == "not_drifted" and Path(row.report_path).is_file()
    assert not list(tmp_path.glob(".drift-*"))  # the 0600 settings and result files are gone


def test_a_check_past_its_timeout_is_stopped_and_recorded_and_the_daemon_goes_on(tmp_path: Path,
                                                                                   untrained_artifact: Path) -> None:
    settings = Settings.load(home=tmp_path, drift={"timeout_minutes": 0.002})
    engine = make_engine(settings.database_url)
    upgrade(engine)
    publish_version(settings, untrained_artifact)
    jobs.bind(jobs.Context(settings, engine, RefitLauncher(settings, engine)))
    try:
        jobs.run_job("drift_check")  # the job boundary: never raises
    finally:
        jobs.bind(None)
    with session_scope(engine) as session:
        event = session.exec(select(Event).where(Event.kind == "job_failed")).one()
        assert event.subject == "drift_check"
        assert event.reason == "drift_check failed: ChildFailed: the drift check of v1: timed out after 0.12 s"
        assert session.exec(select(DriftCheck)).first() is None
    assert not list(tmp_path.glob(".drift-*"))


CHECKS = """
import json, os, signal, sys, time
from refitd.core.db import engine_for
from refitd.core.settings import Settings
from refitd.daemon import jobs
from refitd.daemon.launcher import RefitLauncher
settings = Settings.load(home=sys.argv[1], drift=json.loads(sys.argv[2]))
engine = engine_for(settings)
ctx = jobs.Context(settings, engine, RefitLauncher(settings, engine))
outs = [jobs.drift_check(ctx) for _ in range(3)]
os.kill(outs[-1]["pid"], signal.SIGKILL)  # died between checks: the next check starts another
while os.waitid(os.P_PID, outs[-1]["pid"], os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:  # all its threads gone
    time.sleep(0.05)
outs.append(jobs.drift_check(ctx))
print(json.dumps(outs))
"""


def test_the_check_process_is_kept_retired_replaced_and_gone_with_the_daemon(tmp_path: Path,
                                                                               untrained_artifact: Path) -> None:
    drift = {"window_size": 300, "min_window": 200, "reference_size": 600, "calibration_draws": 1000,
             "process_checks": 2}
    champion_with_traffic(tmp_path, untrained_artifact, other=0)
    done = subprocess.run([sys.executable, "-c", CHECKS, str(tmp_path), json.dumps(drift)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    outs = json.loads(done.stdout.strip().splitlines()[-1])
    assert [o["verdict"] for o in outs] == ["not_drifted"] * 4
    pids = [o["pid"] for o in outs]
    assert pids[0] == pids[1] != pids[2] != pids[3] and os.getpid() not in pids  # kept, retired after 2, replaced
    assert [o["checks_run"] for o in outs] == [1, 2, 1, 1]
    assert len({o["check"] for o in outs}) == 4
    deadline = time.monotonic() + 10  # its daemon exited: the process read the end of its stdin and exited
    while _alive(pids[3]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pids[3])
    assert not list(tmp_path.glob(".drift-*"))


def test_an_answer_already_written_wins_over_a_cancel_and_the_end_of_the_pipe_is_a_death() -> None:
    cancel = threading.Event()
    read, write = os.pipe()
    try:
        os.write(write, b'{"verdict": "drifted"}\n')
        cancel.set()
        assert checker._read_line(read, 5.0, cancel) == (b'{"verdict": "drifted"}', None)
        assert checker._read_line(read, 5.0, cancel) == (None, "cancelled")
        assert checker._read_line(read, 0.05, None) == (None, "timed out after 0.05 s")
        os.close(write)
        write = -1
        assert checker._read_line(read, 5.0, None) == (None, None)
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)


def test_a_closed_or_cancelled_check_process_starts_nothing(tmp_path: Path) -> None:
    settings = Settings.load(home=tmp_path)
    cancel = threading.Event()
    cancel.set()
    process = checker.CheckProcess(settings)
    assert process.run(timeout_s=60, cancel=cancel) == (1, {"error": "cancelled"})
    process.close()
    assert process.run(timeout_s=60) == (1, {"error": "cancelled"})
    assert process.pid is None and not list(tmp_path.glob(".drift-*"))


GARBLER = """
import sys, time
sys.stdin.readline()
sys.stdout.write("this is not a summary\\n")
sys.stdout.flush()
time.sleep(600)
"""


def test_a_garbled_answer_stops_the_process_and_the_next_check_starts_another(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "garbler.py").write_text(GARBLER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "modules"))
    monkeypatch.setattr(children, "DRIFT_CHECK", "garbler")
    process = checker.CheckProcess(Settings.load(home=tmp_path / "home"))
    try:
        with pytest.raises(json.JSONDecodeError):
            process.run(timeout_s=60)
        assert process.pid is None and not list((tmp_path / "home").glob(".garbler-*"))  # stopped, files gone
        with pytest.raises(json.JSONDecodeError):
            process.run(timeout_s=60)  # the next check starts a fresh process
        assert process.pid is None
    finally:
        process.close(1.0)
