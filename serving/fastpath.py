"""``POST /v1/predict`` (and the Open Inference Protocol's ``POST /v2/models/<name>/infer``) answered in pure ASGI:
the hot routes skip FastAPI's routing and request objects.

What this skips of a lone request (route matching, the exception and exit-stack middlewares, dependency
solving, ``Request`` and ``Response`` objects) measured 0.12–0.52 ms, medians of 800 paired requests against
the same endpoint routed by FastAPI in the same server (``python -m refitd.bench route``; 2-vCPU AMD EPYC hosts,
server on one core; the larger figures on a slower host): a sixth to a third of what the server adds to the
model call at concurrency 1. Each instance answers one route itself with the same code the FastAPI endpoint
runs (``answer``) and the same error bodies: ``/v1/predict``, and the V2 infer route of the served model's name
(a versioned infer path, or another name, goes on to FastAPI, as does a request with a query string: what
FastAPI would make of it stays FastAPI's). It sits inside ``RequestMetrics`` and ``BodyLimit``, so the route is
counted under its template and the body limit holds. Every other method and route, and the route's OpenAPI
entry, stay FastAPI's; an error it does not own (not a :class:`RefitdError`) goes on to
Starlette's server-error middleware and a 500, as it would from the endpoint. With FastAPI's own telemetry on
(``serving.opentelemetry``) requests go to FastAPI too: its router is what names the span and the
``http.route`` of each request, and a trace is worth more than the fraction of a millisecond.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from starlette.routing import get_route_path

from refitd.core.errors import RefitdError

JSON_HEADER = (b"content-type", b"application/json")
Headers = list[tuple[bytes, bytes]]


def error_parts(exc: RefitdError) -> tuple[int, bytes, Headers]:
    """Status, ``{"error": "…"}`` body and extra headers for ``exc``: ``Retry-After`` when the error has one,
    ``WWW-Authenticate`` when it challenges for credentials."""
    retry_after, challenge = getattr(exc, "retry_after", None), getattr(exc, "challenge", None)
    headers = [(b"retry-after", str(retry_after).encode())] if retry_after is not None else []
    if challenge is not None:
        headers.append((b"www-authenticate", challenge.encode()))
    return exc.status_code, orjson.dumps({"error": str(exc)}), headers


# The request's whole body and its ASGI headers → the answer's body and headers (its content type among them)
Answer = Callable[[bytes, Headers], Awaitable[tuple[bytes, Headers]]]


class FastRoute:
    """Answer ``POST path`` with ``answer(body, headers)``; pass anything else on to ``app``."""

    def __init__(self, app: Any, *, path: str, route: Any, answer: Answer) -> None:
        self.app, self.path, self.route, self.answer = app, path, route, answer

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST" or get_route_path(scope) != self.path
                or scope.get("query_string") or scope.get("fastapi.telemetry") is not None):
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route  # what RequestMetrics labels the request with, as after FastAPI's routing
        try:
            raw = await _body(receive)
            if raw is None:
                return  # the client went away before its body arrived: nobody to answer
            body, headers = await self.answer(raw, scope["headers"])
            status = 200
        except RefitdError as exc:
            status, body, extra = error_parts(exc)
            headers = [JSON_HEADER, *extra]
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


async def _body(receive: Any) -> bytes | None:
    """The whole request body, or None on a disconnect."""
    message = await receive()
    if message["type"] != "http.request":
        return None
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
