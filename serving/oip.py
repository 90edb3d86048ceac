"""Open Inference Protocol V2 routes (KServe / Triton HTTP), answered by the DataPlane."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from refitd.core.errors import NotFoundError
from refitd.serving import v2
from refitd.serving.body import parse_json
from refitd.serving.dataplane import DataPlane
from refitd.serving.fastpath import Answer, Headers
from refitd.serving.limits import check_texts
from refitd.serving.schemas import errors, infer_schema

SERVER_VERSION = "0.1.0"
_HEADER_KEY = v2.HEADER.lower().encode("latin-1")  # as ASGI names request headers
# With binary_data outputs the answer is the JSON header followed by raw tensor bytes.
BINARY_ANSWER = {200: {"description": "JSON, or (binary_data outputs) a JSON header of Inference-Header-Content-Length "
                                      "bytes followed by the tensors' bytes.",
                       "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


def add_v2_routes(app: FastAPI, plane: DataPlane) -> tuple[str, Any, Answer]:
    """Add the V2 routes; for a :class:`FastRoute`, the served model's unversioned infer path, its route (what
    metrics label it by) and its answer."""
    name = plane.settings.model.name
    limits = plane.settings.serving

    def check(model: str, version: str | None = None) -> None:
        if model != name:
            raise NotFoundError("model", model)
        served = plane.runtime.version if plane.runtime else None
        if version is not None and version != served:
            raise NotFoundError(f"version of {name} being served ({served})", version)

    @app.get("/v2", summary="Server metadata")
    async def server_metadata() -> dict:
        return {"name": "refitd", "version": SERVER_VERSION, "extensions": ["binary_tensor_data", "model_repository"]}

    @app.get("/v2/health/live", summary="The process is up")
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", summary="A model is loaded", responses={503: {"description": "No model is loaded."}})
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": plane.ready}, status_code=200 if plane.ready else 503)

    async def metadata(model: str, version: str | None = None) -> dict:
        check(model, version)
        runtime = plane.require_ready()
        return v2.model_metadata(name, runtime.version, len(runtime.labels))

    async def model_ready(model: str, version: str | None = None) -> JSONResponse:
        check(model, version)
        return JSONResponse({"name": name, "ready": plane.ready}, status_code=200 if plane.ready else 503)

    async def infer_body(raw: bytes, header_length: str | None) -> tuple[bytes, dict[str, str]]:
        plane.require_ready()
        head, binary = v2.split_body(raw, header_length)
        parsed = v2.parse_infer(await parse_json(head), binary, {"label", "scores"},
                                max_texts=limits.max_texts_per_request)
        check_texts(parsed.texts, max_texts=limits.max_texts_per_request, max_chars=limits.max_text_chars)
        answer, _ = await plane.predict_answer(parsed.texts)
        return v2.build_response(parsed, model_name=name, model_version=answer.runtime.version,
                                 labels=answer.labels, scores=answer.scores)

    async def infer(model: str, request: Request, version: str | None = None) -> Response:
        check(model, version)
        body, headers = await infer_body(await request.body(), request.headers.get(v2.HEADER))
        return Response(body, headers=headers)

    async def infer_fast(raw: bytes, headers: Headers) -> tuple[bytes, Headers]:
        length = next((value.decode("latin-1") for key, value in headers if key == _HEADER_KEY), None)
        body, answer_headers = await infer_body(raw, length)
        return body, [(key.lower().encode("latin-1"), value.encode("latin-1")) for key, value in answer_headers.items()]

    body = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": infer_schema(max_texts=limits.max_texts_per_request, max_chars=limits.max_text_chars)}}}}
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        app.add_api_route(prefix, metadata, methods=["GET"], summary="Model metadata", responses=errors(404, 503))
        app.add_api_route(prefix + "/ready", model_ready, methods=["GET"], summary="Model readiness",
                          responses=errors(404) | {503: {"description": "Not ready: {name, ready: false}."}})
        app.add_api_route(prefix + "/infer", infer, methods=["POST"], summary="Inference: BYTES input 'text' [N]",
                          responses=errors(400, 404, 413, 422, 503, 504) | BINARY_ANSWER, openapi_extra=body)

    @app.post("/v2/repository/index", summary="Models in the repository")
    async def repository_index() -> list[dict]:
        runtime = plane.runtime
        return [{"name": name, "version": runtime.version if runtime else "",
                 "state": "READY" if plane.ready else "UNAVAILABLE", "reason": ""}]

    infer_route = next(r for r in app.routes if getattr(r, "path", None) == "/v2/models/{model}/infer")
    return f"/v2/models/{name}/infer", infer_route, infer_fast
