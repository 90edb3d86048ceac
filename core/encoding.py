"""Turning texts into model inputs, the way every refitd artifact expects them.

Shared by serving (the runtime) and flows (export parity, evaluation), so that
what is measured at training time is exactly what is served. Pure ``tokenizers``
and numpy: no torch, no transformers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


#: Pad tokens by model family, tried in order when the tokenizer file names none itself:
#: BERT / WordPiece, RoBERTa / BART / XLM-R, GPT-style vocabularies with an added pad.
PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>", "<PAD>")


def load_tokenizer(path: Path | str, *, max_length: int, pad_token: str | None = None) -> Tokenizer:
    """A fast tokenizer that truncates to ``max_length`` and pads to the longest text in a batch,
    with the model's own pad token (RoBERTa's ``<pad>`` is id 1, not 0)."""
    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length=max_length)
    token, pad_id = _pad(tok, pad_token)
    tok.enable_padding(pad_id=pad_id, pad_token=token)
    return tok


def _pad(tok: Tokenizer, pad_token: str | None) -> tuple[str, int]:
    if pad_token is None and tok.padding is not None:
        return tok.padding["pad_token"], int(tok.padding["pad_id"])
    for token in ([pad_token] if pad_token else []) + list(PAD_TOKENS):
        pad_id = tok.token_to_id(token)
        if pad_id is not None:
            return token, pad_id
    raise ValueError(f"the tokenizer has no pad token (tried {', '.join(PAD_TOKENS)}); add one to the model's tokenizer")


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
