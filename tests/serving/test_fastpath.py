"""FastRoute: POST /v1/predict (and V2 infer) in pure ASGI answers as the FastAPI route did, and steps aside for the rest.

Driven through the ASGI interface itself (the served path through a real server is test_api.py's and
test_front_door.py's: metrics labels, 405 with Allow, 413 on a declared or chunked body)."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from refitd.core.errors import OverloadedError, UnprocessableError
from refitd.serving.fastpath import JSON_HEADER, FastRoute


class _Inner:
    """The app behind the fast path: records that it was called."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        self.calls.append((scope["method"], scope["path"]))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"inner"})


def _call(route: FastRoute, method: str, path: str, messages: list[dict], **extra: object) -> tuple[dict, list[dict]]:
    scope: dict = {"type": "http", "method": method, "path": path, "headers": [], **extra}
    inbox, sent = list(messages), []

    async def receive() -> dict:
        return inbox.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(route(scope, receive, send))
    return scope, sent


def _body(chunks: list[bytes]) -> list[dict]:
    return [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]


def test_answers_post_with_the_whole_body_and_labels_the_route() -> None:
    seen: list[bytes] = []

    async def answer(raw: bytes, headers: list) -> tuple[bytes, list]:
        seen.append((raw, headers))
        return orjson.dumps({"predictions": [{"label": "travel"}]}), [JSON_HEADER]

    inner, route_obj = _Inner(), object()
    route = FastRoute(inner, path="/v1/predict", route=route_obj, answer=answer)
    asked = [(b"inference-header-content-length", b"12")]
    scope, sent = _call(route, "POST", "/v1/predict", _body([b'{"text": "a', b' long ', b'flight"}']), headers=asked)
    assert seen == [(b'{"text": "a long flight"}', asked)] and inner.calls == []
    assert scope["route"] is route_obj  # RequestMetrics reads the route template from here
    start, body = sent
    assert start["status"] == 200 and (b"content-type", b"application/json") in start["headers"]
    assert (b"content-length", str(len(body["body"])).encode()) in start["headers"]
    assert orjson.loads(body["body"]) == {"predictions": [{"label": "travel"}]}


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/predict"), ("POST", "/v1/feedback"),
                                              ("POST", "/v1/predict/"), ("HEAD", "/v1/predict")])
def test_every_other_method_and_route_goes_to_the_app(method: str, path: str) -> None:
    async def answer(raw: bytes, headers: list) -> tuple[bytes, list]:
        raise AssertionError("the fast path answered a request it does not own")

    inner = _Inner()
    _, sent = _call(FastRoute(inner, path="/v1/predict", route=None, answer=answer), method, path, _body([b"{}"]))
    assert inner.calls == [(method, path)] and sent[0]["status"] == 299


def test_a_request_with_a_query_string_goes_to_the_app() -> None:
    """What FastAPI makes of a query (a V2 ``?version=``, say) stays FastAPI's."""
    async def answer(raw: bytes, headers: list) -> tuple[bytes, list]:
        raise AssertionError("the fast path answered a request with a query string")

    inner = _Inner()
    route = FastRoute(inner, path="/v2/models/refitd/infer", route=None, answer=answer)
    _, sent = _call(route, "POST", "/v2/models/refitd/infer", _body([b"{}"]), query_string=b"version=v7")
    assert inner.calls == [("POST", "/v2/models/refitd/infer")] and sent[0]["status"] == 299


def test_refitd_errors_answer_with_status_message_and_retry_after() -> None:
    async def overloaded(raw: bytes, headers: list) -> tuple[bytes, list]:
        raise OverloadedError("queue full", retry_after=3)

    async def unprocessable(raw: bytes, headers: list) -> tuple[bytes, list]:
        raise UnprocessableError("text: must not be empty")

    for answer, status, retry, message in ((overloaded, 503, [(b"retry-after", b"3")], "queue full"),
                                           (unprocessable, 422, [], "text: must not be empty")):
        _, (start, body) = _call(FastRoute(_Inner(), path="/v1/predict", route=None, answer=answer),
                                 "POST", "/v1/predict", _body([b"{}"]))
        assert start["status"] == status and [h for h in start["headers"] if h[0] == b"retry-after"] == retry
        assert orjson.loads(body["body"]) == {"error": message}


def test_a_client_gone_before_its_body_gets_no_answer_and_other_errors_propagate() -> None:
    async def answer(raw: bytes, headers: list) -> tuple[bytes, list]:
        raise RuntimeError("a bug")

    route = FastRoute(_Inner(), path="/v1/predict", route=None, answer=answer)
    _, sent = _call(route, "POST", "/v1/predict", [{"type": "http.request", "body": b"{", "more_body": True},
                                                   {"type": "http.disconnect"}])
    assert sent == []
    with pytest.raises(RuntimeError, match="a bug"):  # Starlette's ServerErrorMiddleware turns it into a 500
        _call(route, "POST", "/v1/predict", _body([b"{}"]))


def test_behind_a_root_path_it_still_answers_and_with_fastapi_telemetry_it_steps_aside() -> None:
    async def answer(raw: bytes, headers: list) -> tuple[bytes, list]:
        return b'{"predictions": []}', [JSON_HEADER]

    inner = _Inner()
    route = FastRoute(inner, path="/v1/predict", route=None, answer=answer)
    _, sent = _call(route, "POST", "/api/v1/predict", _body([b"{}"]), root_path="/api")
    assert sent[0]["status"] == 200 and inner.calls == []
    # FastAPI's router names the span and http.route: a traced request is routed by FastAPI
    _, sent = _call(route, "POST", "/v1/predict", _body([b"{}"]), **{"fastapi.telemetry": object()})
    assert sent[0]["status"] == 299 and inner.calls == [("POST", "/v1/predict")]


def test_the_served_app_answers_predict_through_the_fast_route(tmp_path) -> None:
    from refitd.core.settings import Settings
    from refitd.serving.app import RequestMetrics
    from refitd.serving.body import BodyLimit
    from refitd.serving.server import build

    app = build(Settings.load(home=tmp_path)).app
    assert [m.cls for m in app.user_middleware] == [RequestMetrics, BodyLimit, FastRoute, FastRoute]  # outermost first
    fast = [m.kwargs for m in app.user_middleware if m.cls is FastRoute]
    assert [(f["path"], f["route"].path) for f in fast] == [("/v1/predict", "/v1/predict"),
                                                             ("/v2/models/refitd/infer", "/v2/models/{model}/infer")]
    # With FastAPI's own infer route gone, the fast route still answers (503: no model loaded yet), and a request
    # it leaves to FastAPI finds no route: so the answers above came from the fast route, not from FastAPI.
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != "/v2/models/{model}/infer"]

    async def post(path: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://refitd") as client:
            return await client.post(path, json={"inputs": []})

    answered = asyncio.run(post("/v2/models/refitd/infer"))
    assert answered.status_code == 503 and "no model is loaded" in answered.json()["error"]
    assert asyncio.run(post("/v2/models/refitd/infer?version=v7")).status_code == 404
