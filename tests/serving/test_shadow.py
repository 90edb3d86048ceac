"""Shadow scoring in a real server: the version in shadow scores live traffic off the request path."""

from __future__ import annotations

import threading
import time

import httpx
from sqlmodel import func, select

from refitd.core import registry
from refitd.core.db import make_engine, session_scope
from refitd.core.shadow import figures
from refitd.core.tables import Event, Prediction, ShadowScore
from tests.artifact_factory import build_artifact, publish_version


def _clients(url: str, stop: threading.Event, answered: list[str], failures: list[str]) -> None:
    with httpx.Client(timeout=30) as client:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                r = client.post(f"{url}/v1/predict", json={"texts": [f"the flight {i} was late again", "fine, thanks"]})
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
                continue
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text}")
            else:
                answered.append(r.json()["predictions"][0]["model_version"])


def _wait(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_shadow_scores_live_traffic_and_fails_no_request(start_server, tmp_path) -> None:
    running = start_server(serving={"poll_interval_s": 0.2}, gate={"shadow_share": 0.5})
    settings, url = running.settings, running.url
    engine = make_engine(settings.database_url)
    v2 = publish_version(settings, build_artifact(tmp_path / "a2", seed=2), promote=False)
    broken = build_artifact(tmp_path / "a3", seed=3)
    (broken / "model.onnx").write_bytes(b"not a graph")
    v3 = publish_version(settings, broken, promote=False)

    stop, answered, failures = threading.Event(), [], []
    threads = [threading.Thread(target=_clients, args=(url, stop, answered, failures)) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        registry.start_shadow(engine, v2, reason="test: passed the offline gate")
        _wait(lambda: (httpx.get(f"{url}/v1/status").json()["shadow"] or {}).get("scored", 0) >= 100)
        registry.start_shadow(engine, v3, reason="test: a candidate that cannot be loaded")  # supersedes v2
        _wait(lambda: v3 in httpx.get(f"{url}/v1/status").json()["shadow_refused"])
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)

    assert failures == []
    assert set(answered) == {"v1"} and len(answered) > 100  # the champion answered every request
    status = httpx.get(f"{url}/v1/status").json()
    assert status["shadow"] is None and status["serving"] == "v1"
    running.parts.predlog.flush()
    with session_scope(engine) as s:
        assert registry.get_version(s, version=v2).status == "rejected"  # superseded
        scored = s.exec(select(func.count()).select_from(ShadowScore).where(ShadowScore.version == v2)).one()
        orphans = s.exec(select(func.count()).select_from(ShadowScore)
                         .where(ShadowScore.prediction_id.notin_(select(Prediction.id)))).one()
        served = s.exec(select(func.count()).select_from(Prediction)).one()
        f = figures(s, v2)
        refused = s.exec(select(Event).where(Event.kind == "shadow_load_refused")).one()
    assert scored >= 100 and orphans == 0
    assert scored < 0.8 * served  # a share (0.5 of requests, two texts each), not every request
    assert f["scored"] == scored and f["champion"] == "v1" and 0 <= f["agreement"] <= 1 and f["labelled"] == 0
    assert refused.subject == v3 and "could not load" in refused.reason
    print(f"shadow: {scored} of {served} served texts scored by {v2}, agreement {f['agreement']:.3f}, "
          f"{len(answered)} requests, 0 failed")
