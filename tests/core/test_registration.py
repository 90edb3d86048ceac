"""Registering a candidate is one step: never a row without its files, never an unnamed folder after a start."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError
from sqlmodel import select

from refitd.core import registry
from refitd.core.artifacts import MANIFEST, MODEL_FILE, TOKENIZER_FILE, ArtifactMeta, ArtifactStore
from refitd.core.db import make_engine, session_scope
from refitd.core.registration import register_candidate, sweep
from refitd.core.tables import ModelVersion


def _staged(store: ArtifactStore, tag: str) -> Path:
    folder = store.staging("t")
    ArtifactMeta(labels=["a", "b"], max_length=16, embedding_dim=4).write(folder)
    (folder / MODEL_FILE).write_bytes(tag.encode() * 100)
    (folder / TOKENIZER_FILE).write_text("{}")
    (folder / "tag.txt").write_text(tag)
    return folder


def _rows(engine) -> dict[str, ModelVersion]:
    with session_scope(engine) as s:
        return {mv.version: mv for mv in s.exec(select(ModelVersion))}


def _rows_without_files(engine) -> list[str]:
    return [v for v, mv in _rows(engine).items() if not (mv.artifact_uri and (Path(mv.artifact_uri) / MANIFEST).is_file())]


def _set_aside(store: ArtifactStore) -> list[Path]:
    return sorted(store.root.glob(".orphan-*"))


def test_files_and_row_arrive_together(engine, tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "models")
    first = register_candidate(engine, store, _staged(store, "one"), data_digest="one")
    second = register_candidate(engine, store, _staged(store, "two"), data_digest="two")
    assert (first.version, second.version) == ("v1", "v2") and first.status == "candidate"
    for mv in (first, second):
        assert Path(mv.artifact_uri) == store.verify(mv.version)
        assert (store.path(mv.version) / "tag.txt").read_text() == mv.data_digest
    assert store.versions() == ["v1", "v2"] and not list(store.root.glob(".tmp-*"))


def test_a_failure_after_publish_leaves_neither_row_nor_files(engine, tmp_path: Path, monkeypatch) -> None:
    store = ArtifactStore(tmp_path / "models")
    staged = _staged(store, "one")

    def crash(session, *, version, **fields):  # the folder is in place, the row not yet inserted
        assert (store.root / version / MANIFEST).is_file()
        raise RuntimeError("crash between publish and insert")

    monkeypatch.setattr(registry, "add_candidate", crash)
    with pytest.raises(RuntimeError, match="between publish and insert"):
        register_candidate(engine, store, staged)
    assert _rows(engine) == {} and store.versions() == []
    assert (staged / MANIFEST).is_file()  # back in staging, sealed: the caller discards or retries it
    monkeypatch.undo()
    assert register_candidate(engine, store, staged).version == "v1"
    assert _rows_without_files(engine) == [] and store.versions() == ["v1"]


def test_a_lost_race_is_retried_with_the_same_files(engine, tmp_path: Path, monkeypatch) -> None:
    store = ArtifactStore(tmp_path / "models")
    real, calls = registry.add_candidate, []

    def flaky(session, **kwargs):
        calls.append(kwargs["version"])
        if len(calls) == 1:
            raise OperationalError("INSERT", {}, Exception("deadlock detected"))
        return real(session, **kwargs)

    monkeypatch.setattr(registry, "add_candidate", flaky)
    mv = register_candidate(engine, store, _staged(store, "one"), data_digest="one")
    assert calls == ["v1", "v1"] and mv.version == "v1"
    assert (store.verify("v1") / "tag.txt").read_text() == "one" and not list(store.root.glob(".tmp-*"))


def _killed_after_publish(url: str, root: str, staged: str) -> None:
    """A registration whose process dies after the rename, before the commit (SIGKILL, power loss)."""
    from refitd.core import registry as reg

    reg.add_candidate = lambda *a, **k: os._exit(9)
    register_candidate(make_engine(url), ArtifactStore(Path(root)), Path(staged))


def _crash(db_url: str, store: ArtifactStore) -> None:
    proc = mp.get_context("spawn").Process(target=_killed_after_publish,
                                           args=(db_url, str(store.root), str(_staged(store, "dead"))))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 9


def test_a_killed_registration_leaves_no_row_and_its_folder_is_swept_at_start(engine, db_url, tmp_path) -> None:
    store = ArtifactStore(tmp_path / "models")
    _crash(db_url, store)
    assert _rows(engine) == {} and store.versions() == ["v1"]  # files no row names: invisible to every reader
    swept = sweep(engine, store)
    assert [p.name.startswith(".orphan-v1-") for p in swept] == [True] and store.versions() == []
    assert register_candidate(engine, store, _staged(store, "live")).version == "v1"
    assert (store.verify("v1") / "tag.txt").read_text() == "live"
    assert sweep(engine, store) == []  # the set-aside folder is kept a day for a person to look at …
    assert sweep(engine, store, older_than_s=0) == swept and _set_aside(store) == []  # … then removed


def test_the_next_registration_sets_aside_a_killed_one_under_its_name(engine, db_url, tmp_path) -> None:
    store = ArtifactStore(tmp_path / "models")
    _crash(db_url, store)
    assert register_candidate(engine, store, _staged(store, "live")).version == "v1"
    assert (store.verify("v1") / "tag.txt").read_text() == "live"
    assert [(p / "tag.txt").read_text() for p in _set_aside(store)] == ["dead"]
    assert _rows_without_files(engine) == []


def test_stale_scratch_is_swept_and_fresh_scratch_kept(engine, tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "models")
    stale, fresh = store.staging("old"), store.staging("new")
    os.utime(stale, (0, 0))
    assert sweep(engine, store) == [stale]
    assert fresh.is_dir() and not stale.exists()


def _register_many(url: str, root: str, who: str, n: int) -> None:
    engine, store = make_engine(url), ArtifactStore(Path(root))
    for i in range(n):
        register_candidate(engine, store, _staged(store, f"{who}{i}"), data_digest=f"{who}{i}")


def test_concurrent_registrations_from_two_processes(engine, db_url: str, tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "models")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_register_many, args=(db_url, str(store.root), who, 6)) for who in "ab"]
    for p in procs:
        p.start()
    while any(p.is_alive() for p in procs):
        assert _rows_without_files(engine) == []  # as any reader sees it, at any moment
        assert sweep(engine, store) == []  # never an unnamed folder, nor a stale scratch one
    for p in procs:
        p.join()
        assert p.exitcode == 0
    rows = _rows(engine)
    assert sorted(rows, key=lambda v: int(v[1:])) == [f"v{i}" for i in range(1, 13)]
    for version, mv in rows.items():  # each name's folder holds the files registered under that name
        assert (store.verify(version) / "tag.txt").read_text() == mv.data_digest
    assert sorted(mv.data_digest for mv in rows.values()) == sorted(f"{w}{i}" for w in "ab" for i in range(6))
    assert store.versions() == sorted(rows) and not list(store.root.glob(".tmp-*"))
