"""The HTTP API: endpoints translate HTTP into calls on the DataPlane, nothing more."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from refitd.core import registry
from refitd.core.errors import AdminDeniedError, BadRequestError, NoChampionError, OverloadedError, RefitdError, UnprocessableError
from refitd.serving.dataplane import DataPlane
from refitd.serving.limits import check_texts
from refitd.serving.oip import add_v2_routes
from refitd.serving.schemas import FeedbackRequest, PredictRequest, PredictResponse

log = logging.getLogger(__name__)

Body = TypeVar("Body", bound=BaseModel)


class RequestMetrics:
    """Pure ASGI middleware: requests by route template and status code, and latency."""

    def __init__(self, app, metrics) -> None:  # type: ignore[no-untyped-def]
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def send_wrapper(message) -> None:  # type: ignore[no-untyped-def]
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route=path, code=str(status[0])).inc()
            self.metrics.latency.labels(route=path).observe(time.perf_counter() - start)


async def parse_body(request: Request, model: type[Body]) -> Body:
    """Decode a JSON body whatever its content type; say exactly what is wrong when it cannot."""
    raw = await request.body()
    if not raw:
        raise BadRequestError("the request body is empty: send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequestError(f"the request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequestError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UnprocessableError(errors_message(exc.errors())) from None


def errors_message(errors: list) -> str:
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts) or "invalid request"


def _body_schema(model: type[BaseModel]) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def create_app(plane: DataPlane) -> FastAPI:
    limits = plane.settings.serving

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        plane.predlog.start()
        try:
            await asyncio.to_thread(plane.load_champion)
        except NoChampionError:
            log.warning("no champion yet; not ready until one is promoted")
        except RefitdError as exc:
            log.error("%s; not ready until a loadable champion is promoted", exc)
        await plane.batcher.start()
        stop = asyncio.Event()
        watcher = asyncio.create_task(plane.watch_registry(stop), name="registry-watch")
        try:
            yield
        finally:
            stop.set()
            await watcher
            await plane.batcher.stop()
            await asyncio.to_thread(plane.predlog.close)
            log.info("prediction log flushed: %d rows written, %d spooled", plane.predlog.written, plane.predlog.spooled)

    app = FastAPI(title="refitd", version="0.1.0", lifespan=lifespan,
                  description="Classify texts with the current champion; Open Inference Protocol V2 under /v2.")
    app.state.plane = plane
    metrics = plane.metrics

    app.add_middleware(RequestMetrics, metrics=metrics)

    @app.exception_handler(RefitdError)
    async def _refitd_error(_request: Request, exc: RefitdError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, OverloadedError) else None
        return JSONResponse({"error": str(exc)}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": errors_message(list(exc.errors()))}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.post("/v1/predict", response_model=PredictResponse, summary="Classify one text or a list of texts",
              openapi_extra=_body_schema(PredictRequest))
    async def predict(request: Request) -> Response:
        texts = (await parse_body(request, PredictRequest)).as_list()
        check_texts(texts, max_texts=limits.max_texts_per_request, max_chars=limits.max_text_chars)
        # Built by the data plane to the PredictResponse schema; serialised directly (no re-validation).
        return Response(json.dumps({"predictions": await plane.predict(texts)}), media_type="application/json")

    @app.post("/v1/feedback", summary="Record the true label of a prediction (or of a text)",
              openapi_extra=_body_schema(FeedbackRequest))
    async def feedback(request: Request) -> dict:
        body = await parse_body(request, FeedbackRequest)
        if body.text is not None:
            check_texts([body.text], max_texts=1, max_chars=limits.max_text_chars)
        return await asyncio.to_thread(plane.feedback, label=body.label, prediction_id=body.prediction_id,
                                       text=body.text, source=body.source)

    @app.get("/v1/status", summary="What is served, and how the server is doing")
    async def status() -> dict:
        return await asyncio.to_thread(plane.status)

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def prometheus() -> Response:
        metrics.queue_depth.set(plane.batcher.queued_texts)
        metrics.log_pending.set(plane.predlog.pending)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    def admin(request: Request) -> str:
        token = limits.admin_token
        if token is None:
            raise AdminDeniedError("admin routes are disabled: set serving.admin_token to enable them", disabled=True)
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer ") or not secrets.compare_digest(given[7:], token.get_secret_value()):
            raise AdminDeniedError("admin routes need 'Authorization: Bearer <serving.admin_token>'", disabled=False)
        return request.headers.get("x-refitd-actor", "admin")

    @app.post("/v1/admin/reload", summary="Load the registry's champion now (retries a refused one)")
    async def reload(request: Request) -> dict:
        admin(request)
        return {"serving": await asyncio.to_thread(plane.load_champion, retry_refused=True)}

    @app.post("/v1/admin/promote/{version}", summary="Promote a version and serve it")
    async def promote(version: str, request: Request) -> dict:
        actor = admin(request)
        await asyncio.to_thread(registry.promote, plane.engine, version, actor=actor, reason=f"promoted by {actor} over HTTP")
        return {"serving": await asyncio.to_thread(plane.load_champion, retry_refused=True)}

    @app.post("/v1/admin/rollback", summary="Restore the previous champion and serve it")
    async def rollback(request: Request) -> dict:
        actor = admin(request)
        restored = await asyncio.to_thread(registry.rollback, plane.engine, actor=actor, reason=f"rollback by {actor} over HTTP")
        return {"champion": restored.version, "serving": await asyncio.to_thread(plane.load_champion, retry_refused=True)}

    add_v2_routes(app, plane)
    return app
