"""Artifact folders are written atomically and verified on read."""

from __future__ import annotations

import json
import os
import time

import pytest

from refitd.core.artifacts import META, ArtifactStore
from refitd.core.errors import ArtifactError


def _fill(folder) -> None:
    (folder / META).write_text(json.dumps({"labels": ["a", "b"]}))
    (folder / "model.onnx").write_bytes(b"\x00" * 1000)


def test_write_seal_and_verify(tmp_path) -> None:
    store = ArtifactStore(tmp_path)
    with store.writer("v1") as folder:
        _fill(folder)
    assert store.path("v1") == tmp_path / "v1"
    store.verify("v1")
    assert store.meta("v1")["labels"] == ["a", "b"]


def test_crash_midway_leaves_no_version(tmp_path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(RuntimeError):
        with store.writer("v1") as folder:
            _fill(folder)
            raise RuntimeError("killed while writing")
    assert not (tmp_path / "v1").exists()
    assert list(tmp_path.glob(".tmp-*")) == []
    with pytest.raises(ArtifactError, match="no sealed artifact"):
        store.path("v1")


def test_unsealed_folder_is_not_a_version(tmp_path) -> None:
    store = ArtifactStore(tmp_path)
    (tmp_path / "v1").mkdir()
    _fill(tmp_path / "v1")  # files but no manifest: a half-copied folder
    with pytest.raises(ArtifactError):
        store.path("v1")


def test_tampered_file_fails_verification(tmp_path) -> None:
    store = ArtifactStore(tmp_path)
    with store.writer("v1") as folder:
        _fill(folder)
    (tmp_path / "v1" / "model.onnx").write_bytes(b"\x01" * 1000)
    with pytest.raises(ArtifactError, match="model.onnx does not match"):
        store.verify("v1")


def test_versions_are_immutable_and_meta_required(tmp_path) -> None:
    store = ArtifactStore(tmp_path)
    with store.writer("v1") as folder:
        _fill(folder)
    with pytest.raises(ArtifactError, match="immutable"):
        with store.writer("v1") as folder:
            _fill(folder)
    with pytest.raises(ArtifactError, match=META):
        with store.writer("v2") as folder:
            (folder / "model.onnx").write_bytes(b"x")


def test_sweep_removes_only_stale_scratch(tmp_path) -> None:
    store = ArtifactStore(tmp_path)
    old, fresh = store.staging("a"), store.staging("b")
    past = time.time() - 3 * 24 * 3600
    os.utime(old, (past, past))
    assert store.sweep() == [old]
    assert fresh.exists() and not old.exists()
