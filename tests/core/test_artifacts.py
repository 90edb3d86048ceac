"""Artifact folders are written atomically and verified on read; refitd.json is one typed, checked format."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from refitd.core.artifacts import INT8_FILE, META, MODEL_FILE, TOKENIZER_FILE, ArtifactMeta, ArtifactStore
from refitd.core.errors import ArtifactError

VALID = {"format": 1, "labels": ["a", "b"], "max_length": 32, "model_file": MODEL_FILE, "tokenizer_file": TOKENIZER_FILE,
         "outputs": ["logits", "embedding"], "embedding_dim": 8, "calibration": {"temperature": 1.5, "n": 40}}


def _fill(folder) -> None:
    (folder / META).write_text(json.dumps(VALID))
    (folder / MODEL_FILE).write_bytes(b"\x00" * 1000)
    (folder / TOKENIZER_FILE).write_text("{}")


def test_write_seal_and_verify(tmp_path) -> None:
    store = ArtifactStore(tmp_path)
    with store.writer("v1") as folder:
        _fill(folder)
    assert store.path("v1") == tmp_path / "v1"
    assert store.verify("v1") == tmp_path / "v1"
    meta = store.meta("v1")
    assert meta.labels == ("a", "b") and meta.calibration.temperature == 1.5 and meta.model_for("auto") == MODEL_FILE


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


def test_sweep_removes_unfinished_reference_copies(tmp_path) -> None:
    from refitd.core import reference_info
    from refitd.core.shared_folder import SHARED_DIR
    from refitd.core.settings import Settings

    settings = Settings.load(home=tmp_path / "home", storage={"models_url": str(tmp_path / "models")})
    shared, data = tmp_path / "models" / SHARED_DIR, reference_info.folder(settings)
    shared.mkdir(parents=True)
    data.mkdir(parents=True)
    past = time.time() - 3 * 24 * 3600
    # What a publish or a fetch killed mid-copy leaves, beside files that must stay: published rows, a home's
    # description, and scratch still being written by a live process (fresh).
    stale = [shared / ".tmp-reference.json-1a2b3c4d", data / ".reference-x1y2.parquet",
             data / ".reference-0123456789abcdef.parquet.k9", data / ".reference.json.q7",
             data / ".reference-publish-z3.json"]
    # ... and what is not this code's: a user's hidden file, an NFS client's name for a removed file still open
    kept = [shared / "reference-0123456789abcdef.parquet", data / "reference.json", data / ".gitkeep",
            data / ".nfs000000000123", data / ".reference-fresh.parquet"]
    for p in stale + kept:
        p.write_bytes(b"x")
    for p in stale + kept[:-1]:
        os.utime(p, (past, past))
    assert ArtifactStore(tmp_path / "models").sweep() == stale[:1]
    assert sorted(reference_info.sweep(settings)) == sorted(stale[1:])
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


def test_meta_round_trips_and_picks_the_served_graph(tmp_path) -> None:
    meta = ArtifactMeta(labels=["neg", "pos"], max_length=64, int8_file=INT8_FILE, serve_file=INT8_FILE,
                        embedding_dim=384, calibration={"temperature": 0.8, "ece_after": float("nan")})
    meta.write(tmp_path)
    back = ArtifactMeta.read(tmp_path)
    assert back == meta.model_copy(update={"calibration": back.calibration})
    assert [back.model_for(p) for p in ("auto", "fp32", "int8")] == [INT8_FILE, MODEL_FILE, INT8_FILE]
    with pytest.raises(ArtifactError, match="no INT8 export"):
        ArtifactMeta(labels=["a", "b"], max_length=8, embedding_dim=8).model_for("int8")


@pytest.mark.parametrize(("change", "problem"), [
    ({"format": None}, "refitd.json is format None; this refitd reads format 1"),
    ({"format": 2}, "format 2"),
    ({"max_length": 0}, "max_length: Input should be greater than 0"),
    ({"labels": ["a"]}, "labels: "),
    ({"labels": ["a", "a"]}, "labels must be distinct"),
    ({"serve_file": "other.onnx"}, "serve_file 'other.onnx' is neither"),
    ({"outputs": ["logits"]}, "the graph must output"),
    ({"calibration": {"temperature": -1}}, "calibration.temperature"),
    ({"labels_typo": ["a", "b"]}, "labels_typo: Extra inputs are not permitted"),
])
def test_a_bad_or_old_meta_names_the_version_and_the_problem(tmp_path, change, problem) -> None:
    folder = tmp_path / "v7"
    folder.mkdir()
    (folder / META).write_text(json.dumps({**VALID, **change}))
    with pytest.raises(ArtifactError, match="artifact for v7: ") as err:
        ArtifactMeta.read(folder)
    assert problem in str(err.value)


def test_an_unreadable_meta_is_an_artifact_error(tmp_path) -> None:
    (tmp_path / META).write_text("{not json")
    with pytest.raises(ArtifactError, match=f"cannot read {META}"):
        ArtifactMeta.read(tmp_path, version="v3")


@pytest.mark.parametrize("name", ["/etc/passwd", "../v1/model.onnx", "hf/../../x.onnx", ""])
def test_meta_never_names_a_file_outside_the_version_folder(tmp_path, name) -> None:
    (tmp_path / META).write_text(json.dumps({**VALID, "model_file": name}))
    with pytest.raises(ArtifactError, match="model_file: .* is not a file name inside the version folder"):
        ArtifactMeta.read(tmp_path, version="v2")


def test_meta_refuses_a_link_that_leads_out_of_the_folder(tmp_path) -> None:
    folder, outside = tmp_path / "v2", tmp_path / "elsewhere.onnx"
    folder.mkdir()
    outside.write_bytes(b"x")
    (folder / MODEL_FILE).symlink_to(outside)
    (folder / META).write_text(json.dumps(VALID))
    with pytest.raises(ArtifactError, match="resolves outside the version folder"):
        ArtifactMeta.read(folder)


def test_seal_refuses_a_meta_naming_a_missing_file(tmp_path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(ArtifactError, match=f"names {TOKENIZER_FILE}, which is not in the folder"):
        with store.writer("v1") as folder:
            _fill(folder)
            (folder / TOKENIZER_FILE).unlink()
    assert store.versions() == []


@pytest.mark.parametrize("links", [True, False], ids=["hard links", "no hard links"])
def test_a_shared_file_added_twice_keeps_the_first(tmp_path: Path, monkeypatch, links: bool) -> None:
    """``shared_add`` publishes once: the first writer's bytes stay; on a filesystem that refuses hard links (FUSE,
    vfat, some SMB shares) it looks, then renames."""
    import errno

    if not links:
        def refuse(src, dst):  # type: ignore[no-untyped-def]
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(os, "link", refuse)
    store = ArtifactStore(tmp_path / "models")
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"first")
    second.write_bytes(b"second")
    assert store.shared_add(first, "drift-traffic-v1-x.parquet")
    assert not store.shared_add(second, "drift-traffic-v1-x.parquet")
    assert store.shared_read("drift-traffic-v1-x.parquet") == b"first"
    published = {p.name for p in (tmp_path / "models" / "reference").iterdir()}
    assert published == {"drift-traffic-v1-x.parquet"} | (set() if links else {".tmp-drift-traffic-v1-x.parquet.claim"})
    if not links:  # the claim decides, not a look at the name: a second writer that looked first still loses
        (tmp_path / "models" / "reference" / "drift-traffic-v1-x.parquet").unlink()
        assert not store.shared_add(second, "drift-traffic-v1-x.parquet")
