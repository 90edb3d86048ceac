"""Open Inference Protocol V2 (KServe / Triton) tensors: JSON and the binary-data extension.

A request body is either plain JSON, or a JSON header of ``Inference-Header-Content-Length``
bytes followed by raw tensor bytes for the inputs whose ``parameters.binary_data_size`` is
set. BYTES tensors in binary are a run of (uint32 little-endian length, bytes) elements.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from refitd.core.errors import BadRequestError, UnprocessableError

HEADER = "Inference-Header-Content-Length"


@dataclass
class InferRequest:
    texts: list[str]
    id: str | None = None
    outputs: list[str] = field(default_factory=lambda: ["label", "scores"])
    binary: dict[str, bool] = field(default_factory=dict)


def _bad(message: str) -> BadRequestError:
    return BadRequestError(message)


def decode_bytes_tensor(raw: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise _bad("binary BYTES tensor is truncated (an element length is cut off)")
        (n,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + n > len(raw):
            raise _bad("binary BYTES tensor is truncated (an element is shorter than its length)")
        items.append(raw[offset : offset + n])
        offset += n
    return items


def encode_bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def parse_infer(body: bytes, header_length: str | None, outputs_known: set[str]) -> InferRequest:
    """Read an infer request (JSON or binary extension) into texts and the outputs asked for."""
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise _bad(f"{HEADER} must be an integer; got {header_length!r}") from None
        if not 0 < split <= len(body):
            raise _bad(f"{HEADER} is {split} but the body has {len(body)} bytes")
        head, binary = body[:split], body[split:]
    else:
        head, binary = body, b""
    try:
        request = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(f"malformed JSON inference request: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise UnprocessableError('an inference request needs an "inputs" list')
    texts = _read_text_input(request["inputs"], binary)
    params = request.get("parameters") or {}
    binary_default = bool(params.get("binary_data_output", False))
    asked = request.get("outputs")
    if asked is None:
        names = sorted(outputs_known)
        flags = {n: binary_default for n in names}
    else:
        if not isinstance(asked, list) or not all(isinstance(o, dict) and "name" in o for o in asked):
            raise UnprocessableError('"outputs" must be a list of {"name": …} objects')
        names = [o["name"] for o in asked]
        unknown = [n for n in names if n not in outputs_known]
        if unknown:
            raise UnprocessableError(f"unknown output(s) {unknown}; this model has {sorted(outputs_known)}")
        flags = {o["name"]: bool((o.get("parameters") or {}).get("binary_data", binary_default)) for o in asked}
    return InferRequest(texts=texts, id=request.get("id"), outputs=names, binary=flags)


def _read_text_input(inputs: list[Any], binary: bytes) -> list[str]:
    texts: list[str] | None = None
    offset = 0
    for tensor in inputs:
        if not isinstance(tensor, dict):
            raise UnprocessableError("each input must be a JSON object")
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        chunk = None
        if size is not None:
            chunk, offset = binary[offset : offset + int(size)], offset + int(size)
        if tensor.get("name") != "text":
            raise UnprocessableError(f'unknown input {tensor.get("name")!r}; this model takes one BYTES input "text"')
        if tensor.get("datatype") != "BYTES":
            raise UnprocessableError(f'input "text" must have datatype BYTES; got {tensor.get("datatype")!r}')
        shape = tensor.get("shape")
        if not isinstance(shape, list) or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise UnprocessableError(f'input "text" must have shape [N] or [N, 1]; got {shape!r}')
        raw = decode_bytes_tensor(chunk) if chunk is not None else tensor.get("data")
        if not isinstance(raw, list):
            raise UnprocessableError('input "text" needs "data" (a list of strings) or binary data')
        raw = [x for row in raw for x in (row if isinstance(row, list) else [row])]
        if len(raw) != shape[0]:
            raise UnprocessableError(f'input "text" has shape [{shape[0]}] but {len(raw)} elements')
        texts = []
        for i, item in enumerate(raw):
            if isinstance(item, bytes):
                try:
                    item = item.decode("utf-8")
                except UnicodeDecodeError:
                    raise _bad(f'input "text" element {i} is not valid UTF-8') from None
            if not isinstance(item, str):
                raise UnprocessableError(f'input "text" element {i} must be a string')
            texts.append(item)
    if texts is None:
        raise UnprocessableError('missing input "text"')
    return texts


def build_response(
    request: InferRequest, *, model_name: str, model_version: str, labels: list[str], scores: np.ndarray
) -> tuple[bytes, dict[str, str]]:
    """The response body and headers: JSON, or JSON header + binary tensors where asked."""
    tensors: dict[str, tuple[list[int], str, Any, bytes]] = {
        "label": ([len(labels)], "BYTES", labels, encode_bytes_tensor([x.encode("utf-8") for x in labels])),
        "scores": (list(scores.shape), "FP32", scores.astype(np.float32).ravel().tolist(),
                   scores.astype("<f4").tobytes()),
    }
    outputs, blobs = [], []
    for name in request.outputs:
        shape, dtype, data, blob = tensors[name]
        if request.binary.get(name):
            outputs.append({"name": name, "datatype": dtype, "shape": shape, "parameters": {"binary_data_size": len(blob)}})
            blobs.append(blob)
        else:
            outputs.append({"name": name, "datatype": dtype, "shape": shape, "data": data})
    head: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": outputs}
    if request.id is not None:
        head["id"] = request.id
    head_bytes = json.dumps(head).encode("utf-8")
    if not blobs:
        return head_bytes, {"Content-Type": "application/json"}
    return head_bytes + b"".join(blobs), {"Content-Type": "application/octet-stream", HEADER: str(len(head_bytes))}


def model_metadata(name: str, version: str | None, n_classes: int) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [version] if version else [],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, n_classes]},
        ],
    }
