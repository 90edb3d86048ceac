"""Turning texts into model inputs, the way every refitd artifact expects them.

Shared by serving (the runtime) and flows (export parity, evaluation), so that
what is measured at training time is exactly what is served. Pure ``tokenizers``
and numpy: no torch, no transformers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


def load_tokenizer(path: Path | str, *, max_length: int) -> Tokenizer:
    """A fast tokenizer that truncates to ``max_length`` and pads to the longest text in a batch."""
    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length=max_length)
    pad_id = tok.token_to_id("[PAD]")
    tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]" if pad_id is not None else "<pad>")
    return tok


def encode(tokenizer: Tokenizer, texts: list[str]) -> dict[str, np.ndarray]:
    """int64 ``input_ids`` and ``attention_mask`` of shape [len(texts), longest]."""
    encodings = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
    }


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
