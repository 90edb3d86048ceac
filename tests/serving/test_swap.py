"""Hot swap under load: three promotions, one of them broken, and not one failed request."""

from __future__ import annotations

import threading
import time

import httpx
from sqlalchemy.exc import OperationalError
from sqlmodel import select

from refitd.core import registry
from refitd.core.db import make_engine, session_scope, upgrade
from refitd.core.settings import Settings
from refitd.core.tables import Event
from refitd.serving.server import build
from tests.artifact_factory import build_artifact, publish_version
from tests.serving.conftest import _start, _stop

TOKEN = "test-admin-token"


def _client_loop(url: str, stop: threading.Event, seen: list[str], failures: list[str]) -> None:
    with httpx.Client(timeout=30) as client:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                r = client.post(f"{url}/v1/predict", json={"texts": [f"@united flight {i} delayed", "fine"]})
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                    continue
                seen.append(r.json()["predictions"][0]["model_version"])
            except httpx.HTTPError as exc:
                failures.append(repr(exc))


def _wait_serving(url: str, version: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if httpx.get(f"{url}/v1/status").json()["serving"] == version:
            return
        time.sleep(0.05)
    raise AssertionError(f"never switched to {version}")


def test_three_promotions_under_load_zero_failures(start_server, untrained_artifact, tmp_path) -> None:
    running = start_server(serving={"poll_interval_s": 0.2, "admin_token": TOKEN})
    settings, url = running.settings, running.url
    engine = make_engine(settings.database_url)
    v2 = publish_version(settings, build_artifact(tmp_path / "a2", seed=2), promote=False)
    broken_src = build_artifact(tmp_path / "a3", seed=3)
    (broken_src / "model.onnx").write_bytes(b"this is not an onnx graph")
    v3 = publish_version(settings, broken_src, promote=False)
    v4 = publish_version(settings, build_artifact(tmp_path / "a4", seed=4), promote=False)

    stop, failures = threading.Event(), []
    seen: list[list[str]] = [[] for _ in range(6)]
    clients = [threading.Thread(target=_client_loop, args=(url, stop, seen[i], failures)) for i in range(6)]
    for c in clients:
        c.start()
    time.sleep(1.0)
    registry.promote(engine, v2, actor="test")  # picked up by the registry watch
    _wait_serving(url, v2)
    time.sleep(0.5)
    registry.promote(engine, v3, actor="test")  # broken: must be refused, v2 keeps serving
    deadline = time.time() + 15
    while v3 not in httpx.get(f"{url}/v1/status").json()["refused"] and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    r = httpx.post(f"{url}/v1/admin/promote/{v4}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert r.status_code == 200 and r.json()["serving"] == v4
    time.sleep(1.0)
    stop.set()
    for c in clients:
        c.join(30)

    assert failures == []
    total = sum(len(s) for s in seen)
    by_version = {v: sum(x.count(v) for x in seen) for v in ("v1", v2, v4)}
    print(f"swap under load: {total} requests from 6 clients, 0 failed; answered by {by_version}")
    assert total > 100
    order = {"v1": 1, v2: 2, v4: 4}
    for s in seen:  # every client saw versions only move forward, and never the broken one
        assert v3 not in s
        ranks = [order[v] for v in s]
        assert ranks == sorted(ranks)
    assert {"v1", v2, v4} <= {v for s in seen for v in s}
    with session_scope(engine) as session:
        refused = session.exec(select(Event).where(Event.kind == "load_refused")).all()
    assert [e.subject for e in refused] == [v3] and "still serving v2" in refused[0].reason
    status = httpx.get(f"{url}/v1/status").json()
    assert status["serving"] == v4 and status["champion"] == v4


def test_admin_token_required_and_rollback(start_server, tmp_path) -> None:
    running = start_server(serving={"admin_token": TOKEN, "poll_interval_s": 60})
    v2 = publish_version(running.settings, build_artifact(tmp_path / "b2", seed=5), promote=False)
    assert httpx.post(f"{running.url}/v1/admin/promote/{v2}").status_code == 401
    assert httpx.post(f"{running.url}/v1/admin/promote/{v2}", headers={"Authorization": "Bearer wrong"}).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}", "X-Refitd-Actor": "alice"}
    assert httpx.post(f"{running.url}/v1/admin/promote/{v2}", headers=auth, timeout=60).json()["serving"] == v2
    back = httpx.post(f"{running.url}/v1/admin/rollback", headers=auth, timeout=60).json()
    assert back == {"champion": "v1", "serving": "v1"}
    assert httpx.post(f"{running.url}/v1/admin/promote/v99", headers=auth).status_code == 404
    with session_scope(make_engine(running.settings.database_url)) as session:
        actors = {(e.kind, e.actor) for e in session.exec(select(Event))}
    assert ("promoted", "alice") in actors and ("rolled_back", "alice") in actors


def test_a_rollback_during_a_load_answers_what_serves(start_server, tmp_path, monkeypatch) -> None:
    """v2 is loading (slowly) when the registry rolls back to v1: the rollback's load waits for v2's, reads
    the registry again and swaps back, so it answers v1 and v1 serves, not the version it rolled back from."""
    running = start_server(serving={"poll_interval_s": 60})
    plane, engine = running.parts.plane, make_engine(running.settings.database_url)
    v2 = publish_version(running.settings, build_artifact(tmp_path / "r2", seed=6), promote=False)
    loading, release = threading.Event(), threading.Event()
    real_load = type(plane.runtime).load

    def slow_load(self) -> None:
        if self.version == v2:
            loading.set()
            release.wait(30)
        real_load(self)

    monkeypatch.setattr(type(plane.runtime), "load", slow_load)
    registry.promote(engine, v2, actor="test")
    answers: dict[str, str | None] = {}
    first = threading.Thread(target=lambda: answers.setdefault("promote", plane.load_champion()))
    first.start()
    assert loading.wait(30)
    registry.rollback(engine, actor="test")
    second = threading.Thread(target=lambda: answers.setdefault("rollback", plane.load_champion(retry_refused=True)))
    second.start()
    time.sleep(0.3)
    release.set()
    first.join(30)
    second.join(30)
    assert answers == {"promote": v2, "rollback": "v1"}
    assert plane.runtime.version == "v1"


def test_the_registry_watch_outlives_an_unexpected_error(start_server, tmp_path, monkeypatch) -> None:
    """A poll that fails with an error nobody planned for (here a RuntimeError reading the registry) is logged;
    the next poll still picks up a promotion."""
    running = start_server(serving={"poll_interval_s": 0.2})
    plane, engine = running.parts.plane, make_engine(running.settings.database_url)
    real, failures = plane.champion_version, []

    def flaky() -> str:
        if len(failures) < 3:
            failures.append(1)
            raise RuntimeError("something nobody planned for")
        return real()

    monkeypatch.setattr(plane, "champion_version", flaky)
    v2 = publish_version(running.settings, build_artifact(tmp_path / "w2", seed=7), promote=False)
    registry.promote(engine, v2, actor="test")
    _wait_serving(running.url, v2)
    assert len(failures) == 3


def test_unreadable_model_files_are_retried_not_refused(start_server, tmp_path, monkeypatch) -> None:
    """An OSError reading a version's files (permissions, I/O) is not a verdict on the version: it is not
    refused, and the next poll loads it once the files can be read."""
    running = start_server(serving={"poll_interval_s": 0.2})
    plane, engine = running.parts.plane, make_engine(running.settings.database_url)
    real, denied = plane.store.verify, []

    def verify(version: str):
        if len(denied) < 2:
            denied.append(version)
            raise PermissionError(13, "Permission denied", "model.onnx")
        return real(version)

    monkeypatch.setattr(plane.store, "verify", verify)
    v2 = publish_version(running.settings, build_artifact(tmp_path / "p2", seed=8), promote=False)
    registry.promote(engine, v2, actor="test")
    _wait_serving(running.url, v2)
    assert denied == [v2, v2] and v2 not in plane.refused


def test_the_server_starts_while_the_database_is_down_and_loads_the_champion_once_back(tmp_path, untrained_artifact) -> None:
    """The registry cannot be read at start (the database is down): the server starts anyway, not ready,
    and the registry poll loads the champion once the database answers."""
    settings = Settings.load(home=tmp_path, serving={"poll_interval_s": 0.2})
    upgrade(make_engine(settings.database_url))
    publish_version(settings, untrained_artifact)
    parts = build(settings)
    real, refused = parts.plane.champion_version, []

    def down() -> str:
        if len(refused) < 3:
            refused.append(1)
            raise OperationalError("SELECT", {}, Exception("connection refused"))
        return real()

    parts.plane.champion_version = down  # type: ignore[method-assign]
    running = _start(settings, parts)  # waits until ready: the poll loaded v1 after the outage
    try:
        assert httpx.get(f"{running.url}/v1/status").json()["serving"] == "v1" and len(refused) == 3
    finally:
        _stop(running)
