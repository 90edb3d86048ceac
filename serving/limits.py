"""Request limits shared by the JSON API and the V2 protocol."""

from __future__ import annotations

from refitd.core.errors import PayloadTooLargeError, UnprocessableError


def check_texts(texts: list[str], *, max_texts: int, max_chars: int) -> None:
    """422 for empty input, 413 for too much of it; the message names the setting."""
    if not texts:
        raise UnprocessableError('"texts" is empty: send at least one text')
    if len(texts) > max_texts:
        raise PayloadTooLargeError(f"too many texts: {len(texts)} > {max_texts} (serving.max_texts_per_request)")
    for i, text in enumerate(texts):
        if not text.strip():
            raise UnprocessableError(f"text {i} is empty")
        if len(text) > max_chars:
            raise PayloadTooLargeError(f"text {i} has {len(text)} characters > {max_chars} (serving.max_text_chars)")
