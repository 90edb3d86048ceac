"""The JSON API on a real server: answers, logging, and 4xx for bad input."""

from __future__ import annotations

import httpx
import pytest
from sqlmodel import select

from refitd.core.db import make_engine, session_scope
from refitd.core.tables import Prediction
from refitd.serving.runtime import OnnxClassifier


def test_predict_one_and_many_and_log(running) -> None:
    one = httpx.post(f"{running.url}/v1/predict", json={"text": "@united lost my bag"}).json()["predictions"]
    many = httpx.post(f"{running.url}/v1/predict", json={"texts": ["great flight", "ok", "awful"]}).json()["predictions"]
    assert len(one) == 1 and len(many) == 3
    for p in one + many:
        assert p["model_version"] == "v1"
        assert set(p["scores"]) == {"negative", "neutral", "positive"}
        assert abs(sum(p["scores"].values()) - 1) < 1e-4
        assert p["label"] == max(p["scores"], key=p["scores"].get)
    running.parts.predlog.flush()
    with session_scope(make_engine(running.settings.database_url)) as s:
        rows = {r.id: r for r in s.exec(select(Prediction))}
    assert set(rows) == {p["prediction_id"] for p in one + many}
    row = rows[one[0]["prediction_id"]]
    assert row.text == "@united lost my bag" and row.model_version == "v1"
    assert row.embedding is None  # serving.log_embedding_share = 0: the drift check re-embeds
    assert row.scores == {k: round(v, 4) for k, v in one[0]["scores"].items()}  # the answer keeps full precision


def test_a_share_of_rows_keeps_its_embedding(start_server) -> None:
    running = start_server(serving={"log_embedding_share": 1.0})
    answer = httpx.post(f"{running.url}/v1/predict", json={"texts": ["late again", "fine"]}).json()["predictions"]
    running.parts.predlog.flush()
    with session_scope(make_engine(running.settings.database_url)) as s:
        rows = list(s.exec(select(Prediction)))
    assert {r.id for r in rows} == {p["prediction_id"] for p in answer}
    assert all(len(r.embedding) == 384 * 2 for r in rows)  # float16


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"{bad json", {}, 400, "malformed JSON"),
        (b'{"text": "caf\xff"}', {}, 400, "not valid UTF-8"),
        (b"", {}, 400, "body is empty"),
        (b'{"text": 5}', {}, 422, "text: Input should be a valid string"),
        (b'{"texts": "not a list"}', {}, 422, "texts: Input should be a valid list"),
        (b"{}", {}, 422, 'send exactly one of "text"'),
        (b'{"text": "a", "texts": ["b"]}', {}, 422, 'send exactly one of "text"'),
        (b'{"texts": []}', {}, 422, '"texts" is empty'),
        (b'{"text": "   "}', {}, 422, "text 0 is empty"),
        (b'{"texts": ["a","b","c","d","e","f","g","h","i"]}', {}, 413, "too many texts: 9 > 8"),
        (b'{"text": "' + b"x" * 201 + b'"}', {}, 413, "201 characters > 200"),
        (b'{"text": "a", "extra": 1}', {}, 422, "extra: Extra inputs are not permitted"),
        (b'[1, 2]', {"content-type": "application/json"}, 422, "Input should be a valid dictionary"),
    ],
)
def test_bad_input_is_4xx_with_a_message(running, body, headers, status, message) -> None:
    response = httpx.post(f"{running.url}/v1/predict", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_status_and_health(running) -> None:
    status = httpx.get(f"{running.url}/v1/status").json()
    assert status["champion"] == status["serving"] == "v1" and status["ready"]
    assert httpx.get(f"{running.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{running.url}/openapi.json").json()["paths"]["/v1/predict"]["post"]["requestBody"]


@pytest.mark.parametrize(("mode", "spins", "stops"), [("run", "1", "1"), ("off", "0", "0"), ("on", "1", "0")])
def test_the_session_spins_as_serving_spin_says(untrained_artifact, mode, spins, stops) -> None:
    runtime = OnnxClassifier("v1", untrained_artifact, provider="cpu", threads=2, spin=mode)
    runtime.load()
    options = runtime._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == spins
    assert options.get_session_config_entry("session.force_spinning_stop") == stops
    assert runtime.predict(["still answers"]).labels
