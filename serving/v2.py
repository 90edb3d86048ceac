"""Open Inference Protocol V2 (KServe / Triton) tensors: JSON and the binary-data extension.

A request body is either plain JSON, or a JSON header of ``Inference-Header-Content-Length``
bytes followed by raw tensor bytes for the inputs whose ``parameters.binary_data_size`` is
set. BYTES tensors in binary are a run of (uint32 little-endian length, bytes) elements.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from refitd.core.errors import BadRequestError, UnprocessableError
from refitd.serving.limits import too_many_texts

HEADER = "Inference-Header-Content-Length"


@dataclass
class InferRequest:
    texts: list[str]
    id: str | None = None
    outputs: list[str] = field(default_factory=lambda: ["label", "scores"])
    binary: dict[str, bool] = field(default_factory=dict)


def _bad(message: str) -> BadRequestError:
    return BadRequestError(message)


def decode_bytes_tensor(raw: bytes, *, elements: int | None = None) -> list[bytes]:
    """The elements of a binary BYTES tensor (each a 4-byte little-endian length, then its bytes); 400 as soon
    (422) as soon as there are more than the ``elements`` its shape declares (a body of zero lengths is a million
    elements)."""
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if elements is not None and len(items) == elements:
            raise UnprocessableError(f'input "text" has shape [{elements}] but more elements in its binary data')
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


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensor bytes of a request body (all JSON without the header)."""
    if header_length is None:
        return body, b""
    if not (header_length.isascii() and header_length.isdigit()) or len(header_length) > 18:  # "²".isdigit()
        raise _bad(f"{HEADER} must be a non-negative integer; got {header_length[:40]!r}")
    split = int(header_length)
    if not 0 < split <= len(body):
        raise _bad(f"{HEADER} is {split} but the body has {len(body)} bytes")
    return body[:split], body[split:]


def parse_infer(request: Any, binary: bytes, outputs_known: set[str], *, max_texts: int | None = None) -> InferRequest:
    """Read a decoded infer request (and its binary tensor bytes) into texts and the outputs asked for; a shape
    of more than ``max_texts`` texts is refused (413) before any element is read."""
    if not isinstance(request, dict):
        raise UnprocessableError("an inference request must be a JSON object")
    _only(request, {"id", "parameters", "inputs", "outputs"}, "the inference request")
    if not isinstance(request.get("inputs"), list):
        raise UnprocessableError('an inference request needs an "inputs" list')
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise UnprocessableError('"id" must be a string')
    params = _parameters(request, "the request")
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise UnprocessableError('parameters.binary_data_output must be true or false')
    texts = _read_text_input(request["inputs"], binary, max_texts)
    names, flags = _outputs(request.get("outputs"), outputs_known, binary_default)
    return InferRequest(texts=texts, id=request_id, outputs=names, binary=flags)


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise UnprocessableError(f'"parameters" of {where} must be a JSON object; got {type(params).__name__}')
    return params


def _outputs(asked: Any, known: set[str], binary_default: bool) -> tuple[list[str], dict[str, bool]]:
    if asked is None:
        names = sorted(known)
        return names, {n: binary_default for n in names}
    if not isinstance(asked, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in asked):
        raise UnprocessableError('"outputs" must be a list of {"name": "…"} objects')
    names = [o["name"] for o in asked]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UnprocessableError(f"unknown output(s) {unknown}; this model has {sorted(known)}")
    flags = {}
    for o in asked:
        _only(o, {"name", "parameters"}, f'output {o["name"]!r}')
        flag = _parameters(o, f'output {o["name"]!r}').get("binary_data", binary_default)
        if not isinstance(flag, bool):
            raise UnprocessableError(f'parameters.binary_data of output {o["name"]!r} must be true or false')
        flags[o["name"]] = flag
    return names, flags


def _read_text_input(inputs: list[Any], binary: bytes, max_texts: int | None) -> list[str]:
    if len(inputs) != 1:
        raise UnprocessableError(f'this model takes exactly one input, "text"; got {len(inputs)}')
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise UnprocessableError("each input must be a JSON object")
    _only(tensor, {"name", "datatype", "shape", "data", "parameters"}, 'input "text"')
    if tensor.get("name") != "text":
        raise UnprocessableError(f'unknown input {str(tensor.get("name"))[:40]!r}; this model takes one BYTES input "text"')
    if tensor.get("datatype") != "BYTES":
        raise UnprocessableError(f'input "text" must have datatype BYTES; got {str(tensor.get("datatype"))[:40]!r}')
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or len(shape) not in (1, 2) or not all(_is_count(d) for d in shape)
            or (len(shape) == 2 and shape[1] != 1)):
        raise UnprocessableError(f'input "text" must have shape [N] or [N, 1] (non-negative integers); got {str(shape)[:60]}')
    shape = [int(d) for d in shape]
    if max_texts is not None and shape[0] > max_texts:
        raise too_many_texts(shape[0], max_texts)
    size = _parameters(tensor, 'input "text"').get("binary_data_size")
    if size is not None:
        if not _is_count(size) or size != len(binary):
            raise _bad(f'parameters.binary_data_size of input "text" must be the {len(binary)} bytes after the '
                       f'JSON header; got {str(size)[:40]}')
        raw: Any = decode_bytes_tensor(binary, elements=shape[0])
    else:
        if binary:
            raise _bad(f'{len(binary)} bytes follow the JSON header but no input declares binary_data_size')
        raw = tensor.get("data")
        if not isinstance(raw, list):
            raise UnprocessableError('input "text" needs "data" (a list of strings) or binary data')
        if len(shape) == 2:  # N one-element rows, or the same N strings flat (row-major)
            raw = [row[0] if isinstance(row, list) and len(row) == 1 else row for row in raw]
    if len(raw) != shape[0]:
        raise UnprocessableError(f'input "text" has shape {shape} but {len(raw)} elements')
    return [_text_element(i, item) for i, item in enumerate(raw)]


def _only(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise UnprocessableError(f"unknown field(s) {unknown} in {where}")


def _is_count(value: Any) -> bool:
    """A non-negative integer as JSON Schema counts them (2.0 is the integer 2)."""
    if isinstance(value, float):
        return value.is_integer() and value >= 0
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _text_element(i: int, item: Any) -> str:
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(f'input "text" element {i} is not valid UTF-8') from None
    if not isinstance(item, str):
        raise UnprocessableError(f'input "text" element {i} must be a string; got {type(item).__name__}')
    return item


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
    head_bytes = orjson.dumps(head)
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
