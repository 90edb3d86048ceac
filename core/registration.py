"""Registering a candidate: its bytes and its registry row, as one step.

The registry (rows) and the artifact store (bytes) stay apart; this is the one
place that writes both. The staged folder is sealed first (hashing, outside any
lock). Then, holding the registry lock, the next version name is taken, the
folder is renamed to it and the row is inserted with its ``artifact_uri``; the
commit makes the version exist. The lock (SQLite's write lock, PostgreSQL's
row lock) keeps the name from the count to the commit, so the folder and the
row always get the same name, whichever processes register at once.

If anything fails before the commit, the folder goes back to staging (and the
caller discards it). A process killed between the rename and the commit leaves
a sealed folder that no row names: the daemon's start (:func:`sweep`) sets it
aside, and so does the next registration that takes its name. A row therefore
never names a missing folder, and no unnamed folder outlives a start.

With the versions in an object store, "renamed" reads "uploaded, manifest last": the
upload then happens under the lock (with SQLite that holds the write lock for the upload).
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePath
from typing import Any

from sqlalchemy import Engine

from refitd.core import registry
from refitd.core.artifacts import KEEP_S, ArtifactStore
from refitd.core.errors import RegistryError
from refitd.core.registry import registry_transaction
from refitd.core.tables import ModelVersion

log = logging.getLogger(__name__)


def register_candidate(engine: Engine, store: ArtifactStore, staged: Path, **fields: Any) -> ModelVersion:
    """Seal ``staged``, then publish it and insert its candidate row under the next version name, atomically."""
    store.seal(staged)
    return _register_sealed(engine, store, staged, fields)


@registry.retrying
def _register_sealed(engine: Engine, store: ArtifactStore, staged: Path, fields: dict[str, Any]) -> ModelVersion:
    version, placed = "", False
    try:
        with registry_transaction(engine) as session:
            version = registry.next_version(session)
            if store.exists(version):
                if version in registry.version_names(session):
                    raise RegistryError(f"{version} is registered already; the version count is inconsistent")
                _set_aside(store, version)  # left by a registration killed before its commit
            store.place(version, staged)
            placed = True
            return registry.add_candidate(session, version=version, artifact_uri=store.uri(version), **fields)
    except BaseException:
        if placed:
            _take_back(engine, store, version, staged)
        raise


def _take_back(engine: Engine, store: ArtifactStore, version: str, staged: Path) -> None:
    """After a failed registration, move the folder back to staging unless its row was committed after all."""
    try:
        with registry_transaction(engine) as session:
            if version not in registry.version_names(session):
                store.withdraw(version, staged)
    except Exception:  # noqa: BLE001 - the original error is what the caller must see
        log.exception("could not take back %s after a failed registration; the next start sets it aside", version)


def sweep(engine: Engine, store: ArtifactStore, *, older_than_s: float = KEEP_S) -> list[PurePath]:
    """On start: remove scratch and set-aside folders older than ``older_than_s``, set aside unregistered ones."""
    removed = store.sweep(older_than_s=older_than_s)
    with registry_transaction(engine) as session:  # no registration is between its rename and its commit
        known = registry.version_names(session)
        aside = [_set_aside(store, version) for version in store.versions() if version not in known]
    return removed + aside


def _set_aside(store: ArtifactStore, version: str) -> PurePath:
    aside = store.set_aside(version)
    log.warning("artifact folder %s has no registry row (a registration stopped before its commit); moved to %s, "
                "removed by a start after %.0f h", version, aside, KEEP_S / 3600)
    return aside
