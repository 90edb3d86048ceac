"""Request bodies: a size limit enforced while reading, and JSON parsed off the event loop when large.

``BodyLimit`` is pure ASGI middleware. A declared ``Content-Length`` over the limit is refused before
a byte of the body is read; a chunked body is counted as it arrives and refused at the first chunk
that crosses the limit. Either way the rest of the body is read and dropped (up to a deadline) before
the 413 goes out, so a client still writing its body can read the answer, and the server never holds
more than the limit.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from refitd.core.errors import BadRequestError, PayloadTooLargeError, UnprocessableError

Body = TypeVar("Body", bound=BaseModel)

JSON = "application/json"
_INLINE_PARSE_BYTES = 64 * 1024  # bodies larger than this are parsed on a worker thread
_DRAIN_SECONDS = 10.0


def too_large(limit: int, size: int | None = None) -> PayloadTooLargeError:
    told = f"{size} bytes" if size is not None else "the body"
    return PayloadTooLargeError(f"request body too large: {told} > {limit} bytes (serving.max_body_bytes)")


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, holding at most ``limit`` bytes of one."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _answer(send, BadRequestError("Content-Length must be a non-negative integer"))
                return
            size = int(declared) if len(declared) <= 18 else self.limit + 1
            if size > self.limit:
                if headers.get(b"expect", b"").lower() != b"100-continue":
                    await _drain(receive)  # the client sends its body before it reads an answer
                await _answer(send, too_large(self.limit, size))
                return
        await self.app(scope, _Counted(receive, self.limit), send)


class _Counted:
    """``receive`` that counts body bytes and raises 413 (after draining the rest) past the limit."""

    def __init__(self, receive: Any, limit: int) -> None:
        self.receive, self.limit, self.seen = receive, limit, 0

    async def __call__(self) -> dict:
        message = await self.receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                if message.get("more_body", False):
                    await _drain(self.receive)
                raise too_large(self.limit)
        return message


async def _drain(receive: Any) -> None:
    deadline = time.monotonic() + _DRAIN_SECONDS
    while time.monotonic() < deadline:
        try:
            message = await asyncio.wait_for(receive(), deadline - time.monotonic())
        except TimeoutError:
            return
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def _answer(send: Any, error: BadRequestError) -> None:
    body = orjson.dumps({"error": str(error)})
    await send({"type": "http.response.start", "status": error.status_code,
                "headers": [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


async def parse_json(raw: bytes) -> Any:
    """A JSON document from a body; 400 naming what is wrong. Large bodies are parsed on a worker thread."""
    if not raw:
        raise BadRequestError("the request body is empty: send a JSON object")
    try:
        if len(raw) <= _INLINE_PARSE_BYTES:
            return orjson.loads(raw)
        return await asyncio.to_thread(orjson.loads, raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"malformed JSON: {json_problem(exc)}") from None


def json_problem(exc: orjson.JSONDecodeError) -> str:
    """orjson's message, which names the position; a lone surrogate escape and a body that is not UTF-8 say
    what they are (orjson words both as surrogates)."""
    message = str(exc)
    if message.startswith("str is not valid UTF-8"):
        _, found, position = message.partition(": line ")
        return "the body is not valid UTF-8 (send JSON encoded as UTF-8)" + (f": line {position}" if found else "")
    if "surrogate" in message:
        message += " (a \\uD800–\\uDFFF escape must be half of a surrogate pair: texts must be valid Unicode)"
    return message


async def parse_body(request: Any, model: type[Body]) -> Body:
    """Read, decode and validate a JSON request body into ``model``; 400/413/422 say exactly what is wrong."""
    return await decode_body(await request.body(), model)


async def decode_body(raw: bytes, model: type[Body]) -> Body:
    """Decode and validate a JSON request body into ``model``; 400/422 say exactly what is wrong."""
    return await validate(await parse_json(raw), model, size=len(raw))


async def validate(data: Any, model: type[Body], *, size: int) -> Body:
    """``data`` validated into ``model`` (422 naming the first problems); on a worker thread when the body was
    large: a body of many wrong items is as many errors, and their message would hold the event loop."""
    if size <= _INLINE_PARSE_BYTES:
        return _validated(data, model)
    return await asyncio.to_thread(_validated, data, model)


def _validated(data: Any, model: type[Body]) -> Body:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UnprocessableError(errors_message(exc.errors(include_url=False, include_context=False,
                                                            include_input=False), total=exc.error_count())) from None


MAX_ERRORS_SHOWN = 10


def errors_message(errors: list, *, total: int | None = None) -> str:
    """The first :data:`MAX_ERRORS_SHOWN` problems, each with where it is, and how many more there were."""
    parts = []
    for err in errors[:MAX_ERRORS_SHOWN]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    more = (total if total is not None else len(errors)) - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 and parts else "") or "invalid request"
