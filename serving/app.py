"""The HTTP API: endpoints translate HTTP into calls on the DataPlane, nothing more.

Every route declares in OpenAPI each status it can answer, all errors as ``{"error": "…"}``; the
request schemas are built from the limits validation enforces (serving/schemas.py).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import SecretStr
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from refitd.core import registry
from refitd.core.errors import AdminDeniedError, NoChampionError, RefitdError, UnprocessableError
from refitd.serving.body import JSON, BodyLimit, errors_message, parse_body, parse_json, validate
from refitd.serving.dataplane import DataPlane
from refitd.serving.fastpath import JSON_HEADER, FastRoute, Headers, error_parts
from refitd.serving.limits import check_texts, text_problem, too_many_texts
from refitd.serving.oip import add_v2_routes
from refitd.serving.ratelimit import RateLimiter
from refitd.serving.schemas import (
    FeedbackOut,
    FeedbackRequest,
    PredictRequest,
    PredictResponse,
    errors,
    feedback_schema,
    predict_schema,
)

log = logging.getLogger(__name__)


#: The status counted for a request whose client went away before it was answered (nginx's convention).
CLIENT_CLOSED = 499


class RequestMetrics:
    """Pure ASGI middleware: requests by route template and status code, and latency. A request whose
    client went away before its answer counts as 499, not as a server error: nobody is left to answer,
    and a 500 in the metrics would page someone for a client's timeout."""

    def __init__(self, app, metrics, paths: frozenset[str] = frozenset()) -> None:  # type: ignore[no-untyped-def]
        # ``paths``: the app's fixed route paths, to label a request answered before routing (BodyLimit's 413)
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [0]

        async def send_wrapper(message) -> None:  # type: ignore[no-untyped-def]
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
            status[0] = status[0] or CLIENT_CLOSED  # returned without answering: the client had gone
        except ClientDisconnect:  # a FastAPI route reading the body of a client that left
            status[0] = CLIENT_CLOSED
        except BaseException:
            status[0] = status[0] or 500
            raise
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route is None:
                route = scope["path"] if scope["path"] in self.paths else "unmatched"
            self.metrics.request_done(route, status[0], time.perf_counter() - start)


def bearer_matches(request: Request, token: SecretStr) -> bool:
    """Constant-time comparison of ``Authorization: Bearer …`` with ``token`` (any header bytes are safe)."""
    given = request.headers.get("authorization", "").encode("latin-1")
    return given.startswith(b"Bearer ") and secrets.compare_digest(given[7:], token.get_secret_value().encode("utf-8"))


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {JSON: {"schema": schema}}}}


def create_app(plane: DataPlane) -> FastAPI:
    limits = plane.settings.serving
    otel = limits.opentelemetry
    app = FastAPI(title="refitd", version="0.1.0", lifespan=_lifespan(plane),
                  telemetry={"tracing": otel, "metrics": otel, "logs": otel},
                  description="Classify texts with the current champion; Open Inference Protocol V2 under /v2.")
    app.state.plane = plane
    metrics = plane.metrics
    _add_error_handlers(app)
    feedback_limiter = RateLimiter(limits.feedback_rate_per_s, limits.feedback_burst)

    @app.post("/v1/predict", response_model=PredictResponse, summary="Classify one text or a list of texts",
              responses=errors(400, 413, 422, 503, 504), openapi_extra=_body(
                  predict_schema(max_texts=limits.max_texts_per_request, max_chars=limits.max_text_chars)))
    async def predict(request: Request) -> Response:  # answered by FastRoute (below); this declares it to OpenAPI
        return Response(await predict_json(await request.body()), media_type=JSON)

    async def predict_json(raw: bytes) -> bytes:
        data = await parse_json(raw)
        if isinstance(data, dict) and isinstance(data.get("texts"), list) \
                and len(data["texts"]) > limits.max_texts_per_request:  # before each of them is validated
            raise too_many_texts(len(data["texts"]), limits.max_texts_per_request)
        texts = (await validate(data, PredictRequest, size=len(raw))).as_list()
        check_texts(texts, max_texts=limits.max_texts_per_request, max_chars=limits.max_text_chars)
        # Built by the data plane to the PredictResponse schema; serialised directly (no re-validation).
        return orjson.dumps({"predictions": await plane.predict(texts)})

    @app.post("/v1/feedback", response_model=FeedbackOut, summary="Record the true label of a prediction (or of a text)",
              responses=errors(400, 401, 404, 413, 422, 429, 503), openapi_extra=_body(
                  feedback_schema(max_chars=limits.max_text_chars, labels=[], sources=limits.feedback_sources)))
    async def feedback(request: Request) -> Response:
        if limits.feedback_token is not None and not bearer_matches(request, limits.feedback_token):
            raise FeedbackDeniedError()
        body = await parse_body(request, FeedbackRequest)
        _check_feedback(body, sources=limits.feedback_sources, max_chars=limits.max_text_chars)
        feedback_limiter.take(body.source)
        answer = await asyncio.to_thread(plane.feedback, label=body.label, prediction_id=body.prediction_id,
                                         text=body.text, source=body.source)
        return Response(orjson.dumps(answer), media_type=JSON)

    @app.get("/v1/status", summary="What is served, and how the server is doing")
    async def status() -> dict:
        return await asyncio.to_thread(plane.status)

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def prometheus() -> Response:
        metrics.queue_depth.set(plane.batcher.queued_texts)
        metrics.log_pending.set(plane.predlog.pending)
        metrics.log_rejected.set(plane.predlog.rejected)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    async def predict_fast(raw: bytes, headers: Headers) -> tuple[bytes, Headers]:
        return await predict_json(raw), [JSON_HEADER]

    _add_admin_routes(app, plane)
    infer_path, infer_route, infer_fast = add_v2_routes(app, plane)
    _publish_current_labels(app, plane)
    # Each add_middleware wraps the ones before it: the FastRoutes innermost, RequestMetrics outermost.
    app.add_middleware(FastRoute, path=infer_path, route=infer_route, answer=infer_fast)
    predict_route = next(r for r in app.routes if getattr(r, "path", None) == "/v1/predict")
    app.add_middleware(FastRoute, path="/v1/predict", route=predict_route, answer=predict_fast)
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    fixed = frozenset(r.path for r in app.routes if "{" not in getattr(r, "path", "{"))
    app.add_middleware(RequestMetrics, metrics=metrics, paths=fixed)  # outermost: counts the 413s BodyLimit answers too
    return app


class FeedbackDeniedError(RefitdError):
    status_code = 401
    challenge = "Bearer"  # a 401 names its scheme (RFC 9110 §15.5.2)

    def __init__(self) -> None:
        super().__init__("/v1/feedback needs 'Authorization: Bearer <serving.feedback_token>'")


def _check_feedback(body: FeedbackRequest, *, sources: list[str], max_chars: int) -> None:
    if body.source not in sources:
        raise UnprocessableError(f"source {body.source!r} is not one of {', '.join(sources)} (serving.feedback_sources)")
    if body.text is not None:
        check_texts([body.text], max_texts=1, max_chars=max_chars)
    problem = text_problem(body.label)
    if problem is not None:
        raise UnprocessableError(f"label {problem}")


def _lifespan(plane: DataPlane):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        plane.predlog.start()
        try:
            await asyncio.to_thread(plane.load_champion)
        except NoChampionError:
            log.warning("no champion yet; not ready until one is promoted")
        except RefitdError as exc:
            log.error("%s; not ready until a loadable champion is promoted", exc)
        except SQLAlchemyError as exc:  # start anyway: predictions spool through an outage, the poll retries
            log.error("database unavailable at start (%s); not ready until the registry poll loads the champion",
                      type(exc).__name__)
        await plane.batcher.start()
        stop = asyncio.Event()
        watcher = asyncio.create_task(plane.watch_registry(stop), name="registry-watch")
        try:
            yield
        finally:
            stop.set()
            try:
                await watcher
            except Exception:  # noqa: BLE001 - whatever ended the watcher, the queue and the log still drain
                log.exception("the registry watcher had failed")
            await plane.batcher.stop()
            await asyncio.to_thread(plane.stop_shadow)
            await asyncio.to_thread(plane.predlog.close)
            log.info("prediction log flushed: %d rows written, %d spooled", plane.predlog.written, plane.predlog.spooled)

    return lifespan


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RefitdError)
    async def _refitd_error(_request: Request, exc: RefitdError) -> Response:
        status, body, headers = error_parts(exc)  # the same answer FastRoute gives
        return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers},
                        media_type=JSON)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": errors_message(list(exc.errors()))}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> JSONResponse:
        # Starlette's 405 carries the Allow header RFC 9110 requires: keep every header it set.
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


def _add_admin_routes(app: FastAPI, plane: DataPlane) -> None:
    limits = plane.settings.serving

    def admin(request: Request) -> str:
        token = limits.admin_token
        if token is None:
            raise AdminDeniedError("admin routes are disabled: set serving.admin_token to enable them", disabled=True)
        if not bearer_matches(request, token):
            raise AdminDeniedError("admin routes need 'Authorization: Bearer <serving.admin_token>'", disabled=False)
        actor = request.headers.get("x-refitd-actor", "admin")
        return actor if actor.isprintable() and len(actor) <= 64 else "admin"

    @app.post("/v1/admin/reload", summary="Load the registry's champion now (retries a refused one)",
              responses=errors(401, 404, 503))
    async def reload(request: Request) -> dict:
        admin(request)
        return {"serving": await asyncio.to_thread(plane.load_champion, retry_refused=True)}

    @app.post("/v1/admin/promote/{version}", summary="Promote a version and serve it",
              responses=errors(401, 404, 409, 422, 503))
    async def promote(version: str, request: Request) -> dict:
        actor = admin(request)
        await asyncio.to_thread(registry.promote, plane.engine, version, actor=actor, reason=f"promoted by {actor} over HTTP")
        return {"serving": await asyncio.to_thread(plane.load_champion, retry_refused=True)}

    @app.post("/v1/admin/rollback", summary="Restore the previous champion and serve it",
              responses=errors(401, 404, 409, 503))
    async def rollback(request: Request) -> dict:
        actor = admin(request)
        restored = await asyncio.to_thread(registry.rollback, plane.engine, actor=actor, reason=f"rollback by {actor} over HTTP")
        return {"champion": restored.version, "serving": await asyncio.to_thread(plane.load_champion, retry_refused=True)}


def _publish_current_labels(app: FastAPI, plane: DataPlane) -> None:
    """/openapi.json names the served model's labels as the feedback label's enum (they change on a swap)."""
    build = app.openapi
    limits = plane.settings.serving

    def openapi() -> dict[str, Any]:
        app.openapi_schema = None
        schema = build()
        runtime = plane.runtime
        body = feedback_schema(max_chars=limits.max_text_chars, labels=list(runtime.labels) if runtime else [],
                               sources=limits.feedback_sources)
        schema["paths"]["/v1/feedback"]["post"]["requestBody"]["content"][JSON]["schema"] = body
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
