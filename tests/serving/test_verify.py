"""A version whose files no longer match their manifest is refused on load; the served model stays."""

from __future__ import annotations

import threading

import httpx

from refitd.core.artifacts import MODEL_FILE, ArtifactStore
from refitd.serving.runtime import OnnxClassifier
from tests.artifact_factory import publish_version

TOKEN = "test-admin-token"


def test_a_tampered_model_file_is_refused_and_the_old_model_keeps_serving(start_server, untrained_artifact) -> None:
    running = start_server(serving={"admin_token": TOKEN, "poll_interval_s": 60})
    v2 = publish_version(running.settings, untrained_artifact, promote=False)
    model = ArtifactStore(running.settings.models_dir).path(v2) / MODEL_FILE
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one weight byte: still a graph ONNX Runtime loads and runs
    model.write_bytes(bytes(data))
    OnnxClassifier(v2, model.parent, provider="cpu").load()  # only the manifest can tell

    codes: list[int] = []
    stop = threading.Event()

    def load() -> None:  # clients keep asking while the tampered version is tried and refused
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                codes.append(client.post(f"{running.url}/v1/predict", json={"text": "busy day"}).status_code)

    clients = [threading.Thread(target=load) for _ in range(4)]
    for c in clients:
        c.start()
    r = httpx.post(f"{running.url}/v1/admin/promote/{v2}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    stop.set()
    for c in clients:
        c.join()
    assert codes and set(codes) == {200}, f"{len(codes)} requests, codes {set(codes)}"
    assert r.status_code == 503 and f"{MODEL_FILE} does not match its manifest checksum" in r.json()["error"]
    status = httpx.get(f"{running.url}/v1/status").json()
    assert status["serving"] == "v1" and status["champion"] == v2 and v2 in status["refused"]
    answer = httpx.post(f"{running.url}/v1/predict", json={"text": "still answered?"}, timeout=30)
    assert answer.status_code == 200 and answer.json()["predictions"][0]["model_version"] == "v1"
