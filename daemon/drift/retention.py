"""Retention of drift references: what a retired version's checks kept of production traffic goes once it is
older than ``scheduler.retention_days``, as the prediction log's unlabelled rows do.

Two kinds of file hold request texts past the log: the traffic reference a champion refit on production labels
is checked against, published beside the models (``reference/drift-traffic-<version>-<digest>.parquet``, read by
every host), and the scheduler host's scored cache of each champion's reference (``<home>/drift/reference-<version>.*``).
Both outlive retention on purpose while their version may serve: the champion, the version a rollback would
restore (the newest archived one that was ever promoted), and a candidate or a version in shadow. A version
past that — archived behind the rollback target, or rejected — keeps its files until they are older than the
cutoff; then they go. Promoted again by hand later, it is checked against what the log still holds (its labelled
rows, or its training rows), as a host that never had the files would be. Light: no pandas, no Evidently.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, select
from sqlmodel import col

from refitd.core.artifacts import ArtifactStore
from refitd.core.errors import ArtifactError
from refitd.core.db import session_scope
from refitd.core.settings import Settings
from refitd.core.tables import ModelVersion, VersionStatus
from refitd.daemon.drift import CACHE_PREFIX, CACHE_SUFFIXES, TRAFFIC_PREFIX

log = logging.getLogger(__name__)

_TRAFFIC_NAME = re.compile(re.escape(TRAFFIC_PREFIX) + r"(.+)-[0-9a-f]{12}\.parquet")
_MAY_SERVE = (VersionStatus.champion.value, VersionStatus.candidate.value, VersionStatus.shadow.value)


def retired_versions(engine: Engine) -> set[str]:
    """Versions in the registry that may not serve again without an operator: neither the champion, a candidate,
    one in shadow, nor the rollback target."""
    with session_scope(engine) as session:
        rows = session.execute(select(ModelVersion.version, ModelVersion.status, ModelVersion.promoted_at)
                               .order_by(col(ModelVersion.id))).all()
    promoted = [r for r in rows if r.status == VersionStatus.archived.value and r.promoted_at is not None]
    target = max(promoted, key=lambda r: r.promoted_at).version if promoted else None
    return {r.version for r in rows if r.status not in _MAY_SERVE and r.version != target}


def traffic_version(name: str) -> str | None:
    """The version a published traffic reference's name (``drift-traffic-<version>-<12 hex digits>.parquet``,
    ``baseline.traffic_file``) is for; None for any other name."""
    found = _TRAFFIC_NAME.fullmatch(name)
    return found.group(1) if found else None


def cache_version(name: str) -> str | None:
    """The version a file of this host's reference cache (``reference-<version>.<suffix>``) is for."""
    if not name.startswith(CACHE_PREFIX):
        return None
    for suffix in sorted(CACHE_SUFFIXES, key=len, reverse=True):  # .calibration.json before .json
        if name.endswith(suffix):
            return name.removeprefix(CACHE_PREFIX).removesuffix(suffix) or None
    return None


def prune_references(settings: Settings, engine: Engine, cutoff: datetime) -> list[str]:
    """Delete retired versions' published traffic references and this host's cached references last written
    before ``cutoff``; the names removed (published ones as ``reference/<name>``). A store that cannot be listed
    or written raises ArtifactError, after this host's own files went: an unreachable store keeps no local file."""
    store, before = ArtifactStore.from_settings(settings), cutoff.timestamp()
    unlisted: ArtifactError | None = None
    try:
        listed = store.shared_files(TRAFFIC_PREFIX)
    except ArtifactError as exc:
        listed, unlisted = {}, exc
    retired = retired_versions(engine)  # after the listing: a version promoted since keeps its files
    removed: list[str] = []
    folder: Path = settings.home / "drift"
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        try:
            old = path.is_file() and path.stat().st_mtime < before
        except FileNotFoundError:
            continue
        if old and cache_version(path.name) in retired:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    for name, modified in sorted(listed.items()):
        if modified < before and traffic_version(name) in retired:
            store.shared_remove(name)
            removed.append(f"reference/{name}")
    if removed:
        log.info("retention: removed %d drift reference files of retired versions: %s",
                 len(removed), ", ".join(removed))
    if unlisted is not None:
        raise unlisted
    return removed
