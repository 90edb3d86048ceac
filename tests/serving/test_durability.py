"""An acknowledged prediction is never lost: database outages, and a server killed mid-load."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
from sqlalchemy.engine import make_url
from sqlmodel import select

from refitd.core.db import make_engine, session_scope
from refitd.core.tables import Prediction
from tests.conftest import free_port, wait_ready
from tests.tcp_proxy import TcpProxy


def _stored_ids(url: str) -> set[str]:
    with session_scope(make_engine(url)) as s:
        return set(s.exec(select(Prediction.id)).all())


def _hammer(url: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        r = httpx.post(f"{url}/v1/predict", json={"texts": [f"@united outage test {i}", "ok"]}, timeout=30)
        assert r.status_code == 200, r.text
        ids += [p["prediction_id"] for p in r.json()["predictions"]]
    return ids


def _wait_until(predicate, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_sqlite_locked_out_then_back(start_server) -> None:
    running = start_server(database={"timeout_s": 0.2})
    before = _hammer(running.url, 5)
    db_file = make_url(running.settings.database_url).database
    # waits out a flush of `before` still writing (a busy timeout of 0 failed the test itself, once in CI)
    blocker = sqlite3.connect(db_file, timeout=30, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # every other writer is refused while this is held
    try:
        during = _hammer(running.url, 20)
        _wait_until(lambda: running.parts.predlog.spooled > 0)
        assert not running.parts.predlog.db_ok
        assert httpx.get(f"{running.url}/v1/status").json()["prediction_log"]["spooled_segments"] >= 1
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    after = _hammer(running.url, 5)
    acknowledged = set(before + during + after)
    _wait_until(lambda: acknowledged <= _stored_ids(running.settings.database_url))
    assert len(_stored_ids(running.settings.database_url)) == len(acknowledged)  # nothing doubled


def test_postgres_outage_then_back(start_server, postgres_url) -> None:
    pg = make_url(postgres_url)
    proxy = TcpProxy(pg.host or "127.0.0.1", pg.port or 5432).start()
    via_proxy = pg.set(port=proxy.port).render_as_string(hide_password=False)
    running = start_server(database={"url": via_proxy, "timeout_s": 1})
    before = _hammer(running.url, 5)
    proxy.cut()
    try:
        during = _hammer(running.url, 20)
        _wait_until(lambda: running.parts.predlog.spooled > 0)
    finally:
        proxy.restore()
    after = _hammer(running.url, 5)
    acknowledged = set(before + during + after)
    _wait_until(lambda: acknowledged <= _stored_ids(postgres_url), timeout=60)
    assert len(_stored_ids(postgres_url)) == len(acknowledged)


def test_killed_server_loses_no_acknowledged_prediction(start_server, tmp_path) -> None:
    # Prepare a home with a champion, then run the real CLI server in a child process.
    prepared = start_server()
    home = prepared.settings.home
    port = free_port()
    env = {**os.environ, "REFITD_HOME": str(home), "REFITD_SERVING__PORT": str(port)}
    cmd = [sys.executable, "-m", "refitd.cli", "serve"]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    acknowledged: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=10) as client:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = client.post(f"{url}/v1/predict", json={"text": f"kill test {i}"})
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acknowledged.append(r.json()["predictions"][0]["prediction_id"])

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    server.send_signal(signal.SIGKILL)  # no flush, no shutdown: only the spool survives
    server.wait(10)
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acknowledged) > 20
    # A new server process replays what the dead one had acknowledged but not stored.
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url)
        _wait_until(lambda: set(acknowledged) <= _stored_ids(prepared.settings.database_url), timeout=30)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
