"""Export a fine-tuned classifier to ONNX (logits + pooled embedding) and check parity."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from transformers import PreTrainedModel

from refitd.core.artifacts import OUTPUTS
from refitd.core.encoding import encode, load_tokenizer
from refitd.core.errors import ParityError

log = logging.getLogger(__name__)

OPSET = 17
INPUTS = ["input_ids", "attention_mask"]


class _WithEmbedding(torch.nn.Module):
    """Class logits plus the mean-pooled last hidden state (the sentence embedding)."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        hidden = out.hidden_states[-1]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        embedding = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-6)
        return out.logits, embedding


def export_onnx(model: PreTrainedModel, tokenizer: Any, path: Path) -> Path:
    """Write ``path`` with dynamic batch and sequence axes."""
    model = model.to("cpu").eval()
    sample = tokenizer(["a short example", "a somewhat longer example sentence here"], padding=True, return_tensors="pt")
    args = (sample["input_ids"], sample["attention_mask"])
    dynamic = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
    dynamic.update({name: {0: "batch"} for name in OUTPUTS})
    with torch.no_grad(), warnings.catch_warnings():
        # Tracing warns about Python-side shape checks in the attention mask code; parity is checked below.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        torch.onnx.export(
            _WithEmbedding(model),
            args,
            str(path),
            input_names=INPUTS,
            output_names=list(OUTPUTS),
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )
    log.info("exported %s (%.1f MB)", path.name, path.stat().st_size / 1e6)
    return path


def check_parity(
    model: PreTrainedModel,
    onnx_path: Path,
    tokenizer_json: Path,
    texts: list[str],
    *,
    max_length: int,
    tolerance: float = 1e-3,
) -> float:
    """Largest |logit difference| between torch and ONNX Runtime on ``texts``; ParityError above ``tolerance``."""
    tok = load_tokenizer(tokenizer_json, max_length=max_length)
    feeds = encode(tok, texts)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["logits"], feeds)[0]
    with torch.no_grad():
        torch_logits = (
            model.to("cpu")
            .eval()(
                input_ids=torch.from_numpy(feeds["input_ids"]),
                attention_mask=torch.from_numpy(feeds["attention_mask"]),
            )
            .logits.numpy()
        )
    diff = float(np.max(np.abs(onnx_logits - torch_logits))) if len(texts) else 0.0
    if not np.isfinite(diff) or diff > tolerance:
        raise ParityError(diff, tolerance, len(texts))
    log.info("parity ok: max |Δlogit| = %.2e on %d texts", diff, len(texts))
    return diff

