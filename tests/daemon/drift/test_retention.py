"""Retention of drift references: a retired version's published traffic and cached reference go once older than
``scheduler.retention_days``; the champion's, the rollback target's and a candidate's stay, however old."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from refitd.core import registry
from refitd.core.artifacts import ArtifactStore
from refitd.core.errors import ArtifactError
from refitd.core.settings import Settings
from refitd.core.tables import utcnow
from refitd.daemon import jobs
from refitd.daemon.drift.retention import cache_version, prune_references, retired_versions, traffic_version

CACHE_FILES = ("reference-{v}.parquet", "reference-{v}.json", "reference-{v}.calibration.json")


def test_names_are_read_back_to_their_version() -> None:
    assert traffic_version("drift-traffic-v12-0123456789ab.parquet") == "v12"
    assert traffic_version("drift-traffic-my-model-v3-0123456789ab.parquet") == "my-model-v3"
    assert traffic_version("reference-9f2c.parquet") is None and traffic_version("drift-traffic-.parquet") is None
    assert traffic_version("drift-traffic-v3-notes.parquet") is None  # not a digest: not ours to delete
    assert cache_version("reference-v4.calibration.json") == "v4" and cache_version("reference-v4.parquet") == "v4"
    assert cache_version("reference-v4.json") == "v4" and cache_version(".reference-v4.parquet.77") is None
    assert cache_version("other.json") is None


def _files(settings: Settings, store: ArtifactStore, version: str, *, age_days: float) -> list[Path]:
    folder = settings.home / "drift"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / pattern.format(v=version) for pattern in CACHE_FILES]
    paths.append(store.root / "reference" / f"drift-traffic-{version}-0123456789ab.parquet")
    paths[-1].parent.mkdir(parents=True, exist_ok=True)
    when = time.time() - age_days * 86400
    for path in paths:
        path.write_bytes(b"texts of production traffic")
        os.utime(path, (when, when))
    return paths


def test_a_retired_versions_references_go_after_retention_and_the_servable_ones_stay(tmp_path: Path, db_url: str,
                                                                                     engine) -> None:
    settings = Settings.load(home=tmp_path, database={"url": db_url}, scheduler={"retention_days": 30})
    store = ArtifactStore.from_settings(settings)
    names = [registry.register_version(engine, artifact_uri=f"/models/x{i}").version for i in range(6)]
    v1, v2, v3, v4, v5, v6 = names
    for version in (v1, v2, v3, v4):  # each promoted in turn
        registry.promote(engine, version)
    registry.rollback(engine)  # v4 rejected, v3 champion again
    registry.promote(engine, v5)  # v3 archived behind v5: the rollback target; v1 and v2 archived behind it
    assert retired_versions(engine) == {v1, v2, v4}  # v3 the rollback target, v5 champion, v6 candidate

    old = {v: _files(settings, store, v, age_days=31) for v in names}
    fresh_retired = _files(settings, store, "v1-fresh", age_days=0)  # a version name the registry never held
    (settings.home / "drift" / ".reference-v1.parquet.123").write_bytes(b"scratch")  # the start sweep's, not ours
    removed = prune_references(settings, engine, utcnow() - timedelta(days=30))

    gone = [p for v in (v1, v2, v4) for p in old[v]]
    assert not any(p.exists() for p in gone)
    assert all(p.exists() for v in (v3, v5, v6) for p in old[v]) and all(p.exists() for p in fresh_retired)
    assert (settings.home / "drift" / ".reference-v1.parquet.123").exists()
    assert sorted(removed) == sorted([p.name for v in (v1, v2, v4) for p in old[v][:3]]
                                     + [f"reference/{old[v][3].name}" for v in (v1, v2, v4)])

    # Younger than the cutoff, a retired version's files stay; the job counts what it removed.
    young = _files(settings, store, v1, age_days=5)
    result = jobs.retention(SimpleNamespace(settings=settings, engine=engine))
    assert result["drift_references"] == 0 and all(p.exists() for p in young)
    for p in young:
        os.utime(p, (time.time() - 40 * 86400,) * 2)
    assert jobs.retention(SimpleNamespace(settings=settings, engine=engine))["drift_references"] == 4
    assert not any(p.exists() for p in young)


def test_without_hard_links_the_claim_goes_with_the_file(tmp_path: Path, monkeypatch) -> None:
    """A published file's claim (kept on filesystems without hard links) is removed with it, so the version's
    reference can be published again if it is ever rebuilt."""
    import errno

    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    store = ArtifactStore(tmp_path / "models")
    source = tmp_path / "rows.parquet"
    source.write_bytes(b"rows")
    assert store.shared_add(source, "drift-traffic-v2-0123456789ab.parquet")
    assert list(store.shared_files("drift-traffic-")) == ["drift-traffic-v2-0123456789ab.parquet"]
    store.shared_remove("drift-traffic-v2-0123456789ab.parquet")
    assert sorted(p.name for p in (tmp_path / "models" / "reference").iterdir()) == []
    assert store.shared_add(source, "drift-traffic-v2-0123456789ab.parquet")


def test_a_store_that_cannot_be_listed_still_lets_this_hosts_files_go(tmp_path: Path, db_url: str, engine,
                                                                      monkeypatch) -> None:
    """An unreachable store fails the job (its event says why) but keeps no retired text on this host."""
    settings = Settings.load(home=tmp_path, database={"url": db_url}, scheduler={"retention_days": 30})
    store = ArtifactStore.from_settings(settings)
    v1, v2, v3 = (registry.register_version(engine, artifact_uri=f"/models/y{i}").version for i in range(3))
    for version in (v1, v2, v3):
        registry.promote(engine, version)  # v1 retired behind the rollback target v2
    old = _files(settings, store, v1, age_days=31)

    def unreachable(self: ArtifactStore, prefix: str) -> dict[str, float]:
        raise ArtifactError("reference", "object store http://127.0.0.1:9: connection refused")

    monkeypatch.setattr(ArtifactStore, "shared_files", unreachable)
    with pytest.raises(ArtifactError, match="connection refused"):
        prune_references(settings, engine, utcnow() - timedelta(days=30))
    assert not any(p.exists() for p in old[:3]) and old[3].exists()  # local files gone; the store's wait for it
    monkeypatch.undo()
    assert prune_references(settings, engine, utcnow() - timedelta(days=30)) == [f"reference/{old[3].name}"]
