"""The HTTP API: endpoints translate HTTP into calls on the DataPlane, nothing more."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import json
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from core.errors import BadRequestError, OverloadedError, RefitdError
from serving.dataplane import DataPlane
from serving.schemas import PredictRequest, PredictResponse

log = logging.getLogger(__name__)

Body = TypeVar("Body", bound=BaseModel)


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
        raise BadRequestError(_errors_message(exc.errors()), 422) from None


def _body_schema(model: type[BaseModel]) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _errors_message(errors: list) -> str:
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts) or "invalid request"


def create_app(plane: DataPlane) -> FastAPI:
    limits = plane.settings.serving

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield

    app = FastAPI(title="refitd", version="0.1.0", lifespan=lifespan)
    app.state.plane = plane

    @app.exception_handler(RefitdError)
    async def _refitd_error(_request: Request, exc: RefitdError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, OverloadedError) else None
        return JSONResponse({"error": str(exc)}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _errors_message(list(exc.errors()))}, status_code=422)

    @app.post(
        "/v1/predict", response_model=PredictResponse, summary="Classify one text or a list of texts",
        openapi_extra=_body_schema(PredictRequest),
    )
    async def predict(request: Request) -> PredictResponse:
        texts = (await parse_body(request, PredictRequest)).as_list()
        _check_texts(texts, max_texts=limits.max_texts_per_request, max_chars=limits.max_text_chars)
        return PredictResponse(predictions=await plane.predict(texts))

    @app.get("/v1/status", summary="What is served, and how the server is doing")
    async def status() -> dict:
        return plane.status()

    @app.get("/v2/health/live", summary="Open Inference Protocol: the process is up")
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", summary="Open Inference Protocol: a model is loaded")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": plane.ready}, status_code=200 if plane.ready else 503)

    return app


def _check_texts(texts: list[str], *, max_texts: int, max_chars: int) -> None:
    if not texts:
        raise BadRequestError('"texts" is empty: send at least one text', 422)
    if len(texts) > max_texts:
        raise BadRequestError(f"too many texts: {len(texts)} > {max_texts} (serving.max_texts_per_request)", 413)
    for i, text in enumerate(texts):
        if not text.strip():
            raise BadRequestError(f"text {i} is empty", 422)
        if len(text) > max_chars:
            raise BadRequestError(f"text {i} has {len(text)} characters > {max_chars} (serving.max_text_chars)", 413)
