"""Schemathesis hooks for refitd's schema (loaded through SCHEMATHESIS_HOOKS).

JSON Schema cannot say that a V2 tensor's shape[0] equals the number of its data elements; the
schema says it in words, and this hook makes generated requests keep that one rule. It only
touches a shape that is already schema-valid, so a request generated to break the schema stays broken.
"""

from __future__ import annotations

from typing import Any

import schemathesis


def _consistent_shape(body: Any) -> Any:
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        return body
    for tensor in body["inputs"]:
        if not isinstance(tensor, dict):
            continue
        shape, data = tensor.get("shape"), tensor.get("data")
        if (isinstance(shape, list) and shape and isinstance(data, list)
                and isinstance(shape[0], int | float) and not isinstance(shape[0], bool) and shape[0] >= 0
                and float(shape[0]).is_integer()):
            tensor["shape"] = [len(data), *shape[1:]]
    return body


@schemathesis.hook
def map_case(ctx: Any, case: Any) -> Any:
    """Every phase (coverage included) passes its cases here; requests meant to break the schema are left alone."""
    negative = case.meta is not None and case.meta.generation.mode.is_negative
    if case.operation.path.endswith("/infer") and not negative:
        case.body = _consistent_shape(case.body)
    return case
