"""Request limits and the text rule shared by the JSON API and the V2 protocol, with their JSON Schema."""

from __future__ import annotations

import re
from typing import Any

from refitd.core.errors import PayloadTooLargeError, UnprocessableError

# What a text may not contain: NUL (PostgreSQL text refuses it) and lone surrogates (not Unicode:
# neither the tokenizer nor UTF-8 can take them). Refused with 422, never replaced.
_FORBIDDEN = re.compile(r"[\x00\ud800-\udfff]")
# The same rule, with "not blank", as a JSON Schema pattern (searched, so it is anchored).
TEXT_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be classified, or None."""
    bad = _FORBIDDEN.search(text)
    if bad is not None:
        char = bad.group()
        what = "a NUL character" if char == "\x00" else f"a lone surrogate (U+{ord(char):04X})"
        return f"contains {what} at character {bad.start()}; texts must be valid Unicode without NUL"
    if not text.strip():
        return "is empty or only whitespace"
    return None


def too_many_texts(count: int, max_texts: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"too many texts: {count} > {max_texts} (serving.max_texts_per_request)")


def check_texts(texts: list[str], *, max_texts: int, max_chars: int) -> None:
    """422 for empty or invalid input, 413 for too much of it; the message names the text and the setting."""
    if not texts:
        raise UnprocessableError('"texts" is empty: send at least one text')
    if len(texts) > max_texts:
        raise too_many_texts(len(texts), max_texts)
    for i, text in enumerate(texts):
        if len(text) > max_chars:
            raise PayloadTooLargeError(f"text {i} has {len(text)} characters > {max_chars} (serving.max_text_chars)")
        problem = text_problem(text)
        if problem is not None:
            raise UnprocessableError(f"text {i} {problem}")



def text_schema(max_chars: int, description: str) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_chars, "pattern": TEXT_PATTERN,
            "description": description + " Not blank, no NUL, valid Unicode."}
