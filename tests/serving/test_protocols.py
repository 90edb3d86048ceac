"""Feedback, Open Inference Protocol V2 through a real V2 client, metrics and admin routes."""

from __future__ import annotations

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import select

from refitd.core.db import make_engine, session_scope
from refitd.core.tables import Feedback


def _predict(url: str, text: str) -> dict:
    return httpx.post(f"{url}/v1/predict", json={"text": text}).json()["predictions"][0]


def test_feedback_idempotent_replace_and_404(running) -> None:
    pid = _predict(running.url, "@united lost my bag")["prediction_id"]
    first = httpx.post(f"{running.url}/v1/feedback", json={"prediction_id": pid, "label": "negative"})
    again = httpx.post(f"{running.url}/v1/feedback", json={"prediction_id": pid, "label": "negative"})
    changed = httpx.post(f"{running.url}/v1/feedback", json={"prediction_id": pid, "label": "neutral"})
    assert (first.json()["status"], again.json()["status"], changed.json()["status"]) == ("recorded", "unchanged", "replaced")
    assert first.json()["feedback_id"] == again.json()["feedback_id"] == changed.json()["feedback_id"]
    bare = httpx.post(f"{running.url}/v1/feedback", json={"text": "never predicted", "label": "positive"})
    assert bare.status_code == 200
    unknown = httpx.post(f"{running.url}/v1/feedback", json={"prediction_id": "f" * 32, "label": "negative"})
    assert unknown.status_code == 404 and "not found" in unknown.json()["error"]
    bad_label = httpx.post(f"{running.url}/v1/feedback", json={"prediction_id": pid, "label": "furious"})
    assert bad_label.status_code == 422 and "expected one of negative, neutral, positive" in bad_label.json()["error"]
    neither = httpx.post(f"{running.url}/v1/feedback", json={"label": "negative"})
    assert neither.status_code == 422
    with session_scope(make_engine(running.settings.database_url)) as s:
        rows = s.exec(select(Feedback)).all()
    assert sorted((r.label, r.prediction_id is None) for r in rows) == [("neutral", False), ("positive", True)]


def test_an_answer_an_audit_labelled_stays_measured(start_server) -> None:
    """With ``serving.feedback_measure_sources``, a prediction's label keeps the audit's source when a correction
    replaces it (the audit picked the answer without looking at it), and an audit that confirms a correction makes
    the answer measured; the label is always the newest."""
    running = start_server(serving={"feedback_measure_sources": ["review"]})

    def label(pid: str, value: str, source: str) -> str:
        answer = httpx.post(f"{running.url}/v1/feedback", json={"prediction_id": pid, "label": value, "source": source})
        assert answer.status_code == 200, answer.text
        return answer.json()["status"]

    audited, corrected, plain = (_predict(running.url, t)["prediction_id"] for t in ("late again", "nice crew", "ok"))
    assert (label(audited, "negative", "review"), label(audited, "neutral", "api")) == ("recorded", "replaced")
    assert (label(corrected, "positive", "api"), label(corrected, "positive", "review")) == ("recorded", "unchanged")
    assert (label(plain, "negative", "api"), label(plain, "positive", "api")) == ("recorded", "replaced")
    with session_scope(make_engine(running.settings.database_url)) as s:
        stored = {r.prediction_id: (r.label, r.source) for r in s.exec(select(Feedback)).all()}
    assert stored == {audited: ("neutral", "review"), corrected: ("positive", "review"), plain: ("positive", "api")}


def test_a_correction_that_trained_a_model_never_tests_it_even_once_audited(start_server) -> None:
    """Labels posted through the API, then read by two refits in a row: texts corrected before the first refit
    (so trained by its model) are never in the second refit's recent test or validation set, whether an audit
    later confirmed the correction (its row's source becomes the audit's) or relabelled it."""
    from refitd.core.datasets import assign_splits
    from refitd.core.labels import labelled_rows
    from refitd.flows import snapshot as snap

    running = start_server(serving={"feedback_measure_sources": ["review"], "feedback_rate_per_s": 1000,
                                    "feedback_burst": 1000})
    texts = [f"flight {i} was {'late' if i % 2 else 'fine'} and the crew {i % 7}" for i in range(240)]
    ids = [httpx.post(f"{running.url}/v1/predict", json={"texts": texts[i:i + 8]}).json()["predictions"]
           for i in range(0, len(texts), 8)]
    pids = [p["prediction_id"] for batch in ids for p in batch]

    def label(pid: str, value: str, source: str) -> None:
        answer = httpx.post(f"{running.url}/v1/feedback", json={"prediction_id": pid, "label": value, "source": source})
        assert answer.status_code == 200, answer.text

    for pid in pids:
        label(pid, "negative", "api")  # corrections, before the first refit
    engine = make_engine(running.settings.database_url)
    reference = assign_splits(pd.DataFrame({"text": [f"reference {i}" for i in range(300)],
                                            "label": ["negative", "neutral", "positive"] * 100}),
                              validation_fraction=0.1, test_fraction=0.15)
    kw = dict(validation_fraction=0.1, test_fraction=0.15, recent_fraction=0.2, replay_ratio=1.0, max_train_rows=None,
              max_test_rows=None, seed=0, measuring=["review"])
    with session_scope(engine) as s:
        first = snap.build(reference, labelled_rows(s), since=None, **kw)
    assert len(first.recent_test) == 0 and not set(first.validation["text"]) & set(texts)  # corrections only train
    assert len(set(first.train["text"]) & set(texts)) > 150
    for i, pid in enumerate(pids):  # then an audit: confirming half of them, relabelling the rest
        label(pid, "negative" if i % 2 else "positive", "review")
    with session_scope(engine) as s:
        rows = labelled_rows(s)
        second = snap.build(reference, rows, since=first.labels_until, **kw)
        unguarded = snap.build(reference, rows.assign(corrected_at=None), since=first.labels_until, **kw)
    assert set(rows["source"]) == {"review"} and rows["corrected_at"].notna().all()
    measured = set(second.recent_test["text"]) | set(second.validation["text"])
    assert not measured & set(texts)
    assert set(unguarded.recent_test["text"]) & set(texts)  # what the row alone would have let through


@pytest.mark.parametrize("binary", [True, False])
def test_v2_infer_with_tritonclient(running, binary: bool) -> None:
    client = triton.InferenceServerClient(running.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("refitd")
    meta = client.get_model_metadata("refitd")
    assert meta["inputs"][0] == {"name": "text", "datatype": "BYTES", "shape": [-1]}
    texts = np.array([b"@united worst airline", b"@jetblue lovely crew", "caf\u00e9 ok".encode()], dtype=object)
    tensor = triton.InferInput("text", [3], "BYTES")
    tensor.set_data_from_numpy(texts, binary_data=binary)
    outputs = [triton.InferRequestedOutput("label", binary_data=binary), triton.InferRequestedOutput("scores", binary_data=binary)]
    result = client.infer("refitd", [tensor], outputs=outputs)
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
    scores = result.as_numpy("scores")
    assert scores.shape == (3, 3) and np.allclose(scores.sum(axis=1), 1, atol=1e-4)
    assert labels == [["negative", "neutral", "positive"][i] for i in scores.argmax(axis=1)]
    assert result.get_response()["model_version"] == "v1"
    # no outputs named: the client asks for all of them in binary
    default = client.infer("refitd", [tensor])
    assert default.as_numpy("scores").shape == (3, 3)
    index = client.get_model_repository_index()
    assert index == [{"name": "refitd", "version": "v1", "state": "READY", "reason": ""}]


def test_v2_versioned_routes_and_errors(running) -> None:
    url = running.url
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello"]}]}
    assert httpx.post(f"{url}/v2/models/refitd/versions/v1/infer", json=body).status_code == 200
    assert httpx.post(f"{url}/v2/models/refitd/versions/v7/infer", json=body).status_code == 404
    assert httpx.post(f"{url}/v2/models/other/infer", json=body).status_code == 404
    assert httpx.post(f"{url}/v2/models/refitd/infer?version=v7", json=body).status_code == 404  # FastAPI's, as ever
    assert httpx.post(f"{url}/v2/models/refitd/infer?version=v1", json=body).status_code == 200
    cases = [
        ({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, 422, "datatype BYTES"),
        ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a"]}]}, 422, "shape [2] but 1 elements"),
        ({"inputs": [{"name": "img", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}, 422, "unknown input 'img'"),
        ({"inputs": []}, 422, 'exactly one input, "text"; got 0'),
        ({"outputs": []}, 422, '"inputs" list'),
        ({**body, "outputs": [{"name": "logits"}]}, 422, "unknown output(s) ['logits']"),
    ]
    for payload, status, message in cases:
        r = httpx.post(f"{url}/v2/models/refitd/infer", json=payload)
        assert r.status_code == status and message in r.json()["error"], (payload, r.text)
    r = httpx.post(f"{url}/v2/models/refitd/infer", content=b"{nope")
    assert r.status_code == 400
    r = httpx.post(f"{url}/v2/models/refitd/infer", content=b"{}", headers={"Inference-Header-Content-Length": "99"})
    assert r.status_code == 400 and "body has 2 bytes" in r.json()["error"]


def test_v2_infer_answers_alike_through_the_fast_route_and_through_fastapi(running) -> None:
    """The served model's unversioned infer path is answered in pure ASGI (FastRoute), the versioned one by FastAPI:
    the same bytes and headers, binary or JSON, the same errors; each counted under its route template."""
    url = running.url
    blob = b"".join(len(t).to_bytes(4, "little") + t for t in (b"@united worst airline", "caf\u00e9 ok".encode()))
    head = orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                                     "parameters": {"binary_data_size": len(blob)}}],
                         "outputs": [{"name": "label", "parameters": {"binary_data": True}},
                                     {"name": "scores", "parameters": {"binary_data": True}}]})
    requests = [(head + blob, {"Inference-Header-Content-Length": str(len(head))}, 200),
                (orjson.dumps({"id": "r1", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                                       "data": ["lovely crew"]}]}), {}, 200),
                (orjson.dumps({"inputs": []}), {}, 422), (b"{nope", {}, 400),
                (b"{}", {"Inference-Header-Content-Length": "99"}, 400)]
    for body, headers, status in requests:
        fast = httpx.post(f"{url}/v2/models/refitd/infer", content=body, headers=headers)
        routed = httpx.post(f"{url}/v2/models/refitd/versions/v1/infer", content=body, headers=headers)
        assert fast.status_code == routed.status_code == status, (fast.text, routed.text)
        assert fast.content == routed.content
        for name in ("content-type", "content-length", "inference-header-content-length"):
            assert fast.headers.get(name) == routed.headers.get(name), name
    binary = httpx.post(f"{url}/v2/models/refitd/infer", content=requests[0][0], headers=requests[0][1])
    assert binary.headers["content-type"] == "application/octet-stream"
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)}
    counted = {(s.labels["route"], s.labels["code"]): s.value for s in families["refitd_requests"].samples
               if s.name == "refitd_requests_total"}
    assert counted[("/v2/models/{model}/infer", "200")] == 3
    assert counted[("/v2/models/{model}/versions/{version}/infer", "200")] == 2


def test_metrics_scrape_parses(running) -> None:
    for _ in range(3):
        _predict(running.url, "@united delayed again")
    httpx.post(f"{running.url}/v1/predict", content=b"{bad")
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{running.url}/metrics").text)}
    requests = {(s.labels["route"], s.labels["code"]): s.value for s in families["refitd_requests"].samples
                if s.name == "refitd_requests_total"}
    assert requests[("/v1/predict", "200")] == 3 and requests[("/v1/predict", "400")] == 1
    assert any(s.labels.get("version") == "v1" and s.value == 1 for s in families["refitd_model_version_info"].samples)
    assert sum(s.value for s in families["refitd_batch_size"].samples if s.name == "refitd_batch_size_count") >= 3
    assert sum(s.value for s in families["refitd_predictions"].samples if s.name == "refitd_predictions_total") == 3
    for name in ("refitd_queue_depth", "refitd_model_swaps", "refitd_model_loads_refused", "refitd_request_latency_seconds"):
        assert name in families


def test_admin_routes_disabled_without_token(running) -> None:
    r = httpx.post(f"{running.url}/v1/admin/reload")
    assert r.status_code == 404 and "serving.admin_token" in r.json()["error"]
