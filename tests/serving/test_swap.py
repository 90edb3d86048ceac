"""Hot swap under load: three promotions, one of them broken, and not one failed request."""

from __future__ import annotations

import threading
import time

import httpx
from sqlmodel import select

from refitd.core import registry
from refitd.core.db import make_engine, session_scope
from refitd.core.tables import Event
from tests.artifact_factory import build_artifact
from tests.artifact_factory import publish_version

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
