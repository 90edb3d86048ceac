"""Which rows a champion is checked against (README, Drift checks, "The reference"): its training rows, or the
production traffic it was refit on, published beside the models the first time it is read.

Publishing matters for traffic: retention prunes unlabelled predictions after ``scheduler.retention_days``, and
each host keeps its scored copy in its own ``<home>/drift``. A reference rebuilt later (a new host, a lost cache)
from what the database still holds would be fewer rows, the labelled ones only — or, below ``drift.min_window``,
the training rows, replay-weighted to the old traffic, and the champion would read as drifted from then on. The
published rows make every host, and every rebuild, check against the same traffic.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine, select
from sqlmodel import Session, col

from refitd.core import reference as refdata
from refitd.core.artifacts import MANIFEST, TRAIN_ROWS_FILE, ArtifactStore
from refitd.core.db import session_scope
from refitd.core.errors import ArtifactError
from refitd.core.files import sha256_file
from refitd.core.labels import predictions_with_labels
from refitd.core.settings import Settings
from refitd.core.shared_folder import SHARED_DIR
from refitd.core.tables import DriftCheck, ModelVersion, RefitRun
from refitd.daemon.drift import CACHE_SCRATCH_PREFIX, TRAFFIC_PREFIX

log = logging.getLogger(__name__)

TRAFFIC_COLUMNS = ["created_at", "model_version", "text"]


def traffic_file(version: str, folder: Path) -> str:
    """The name of ``version``'s published traffic reference in the artifact store's shared folder: the version
    and its manifest's digest, so a version name used again (a database restored from a backup, a new home on
    the same store) never reads another model's traffic."""
    return f"{TRAFFIC_PREFIX}{version}-{sha256_file(folder / MANIFEST)[:12]}.parquet"


def reference_rows(settings: Settings, champion: ModelVersion, folder: Path, engine: Engine) -> tuple[pd.DataFrame, dict]:
    """The rows a champion is checked against, and where they came from.

    A champion trained on production labels that arrived since its parent (at least ``drift.min_labels``
    of them) is checked against the production traffic it was trained and tested on: the newest
    ``drift.reference_size`` predictions logged after its parent was registered and before its refit
    started (traffic after that was neither trained nor tested on, and is what the first checks of the
    new champion see), when at least ``drift.min_window`` were. When the parent's checks had found drift
    up to the refit, the reference starts where that drift began (:func:`drift_onset`) if at least
    ``drift.min_window`` rows came since: a refit soon after a shift would otherwise take a reference
    that reaches back into the traffic before it, and the new champion's checks would read the
    difference as drift. Those rows are published the first time (:func:`traffic_file`) and read back after;
    a smaller ``drift.reference_size`` later takes their newest rows, a larger one keeps them all (the log
    may no longer hold what came before them).
    Any other champion — the first, one trained without new labels — against a sample of its own training rows.
    """
    if (folder / TRAIN_ROWS_FILE).is_file():
        trained = pd.read_parquet(folder / TRAIN_ROWS_FILE)
    else:  # an artifact from before training rows were stored: the reference dataset's training split
        data = refdata.load(settings, first_use=False)  # a check never stores (or publishes) what it read
        trained = data[data["split"] == "train"]
    d = settings.drift
    new_labels = int((trained["source"] == "feedback_new").sum()) if "source" in trained else 0
    if new_labels >= d.min_labels and champion.parent:
        traffic, onset, name = _traffic(settings, champion, folder, engine)
        if len(traffic) >= d.min_window:
            return traffic[["text"]], {
                "source": "production traffic before the refit" + (" since the drift began" if onset else ""),
                "trained_on_new_labels": new_labels, "drift_onset": onset,
                "from": traffic["created_at"].min(), "to": traffic["created_at"].max(),
                "served_by": sorted(traffic["model_version"].unique().tolist()), "published": name}
    sample = trained.sample(n=min(d.reference_size, len(trained)), random_state=0)
    return sample, {"source": "training rows", "trained_on_new_labels": new_labels}


def _traffic(settings: Settings, champion: ModelVersion, folder: Path,
             engine: Engine) -> tuple[pd.DataFrame, Any, str | None]:
    """The production traffic before ``champion``'s refit — published, else from the log (then published, unless
    another host's copy got there first: that one is used) — the onset of the drift it starts at (None when it
    reaches back before one) and the published file's name (None when it could not be published)."""
    d = settings.drift
    with session_scope(engine) as session:
        parent = session.scalars(select(ModelVersion).where(ModelVersion.version == champion.parent)).first()
        refit = session.scalars(select(RefitRun.created_at).where(RefitRun.candidate_version == champion.version)
                                .order_by(col(RefitRun.id).desc())).first()
        end = refit or champion.created_at
        onset = drift_onset(session, champion.parent, before=end)
        after = parent.created_at if parent else None
    store, name = ArtifactStore.from_settings(settings), traffic_file(champion.version, folder)
    published = _read_published(store, name)
    if published is None:
        with session_scope(engine) as session:
            since = [s for s in (after, onset) if s is not None]
            traffic = predictions_with_labels(session, unlabelled=True, latest=d.reference_size,
                                              after=max(since) if since else None, before=end)
            if onset is not None and len(traffic) < d.min_window:  # too little since the shift: reach back
                onset = None
                traffic = predictions_with_labels(session, unlabelled=True, latest=d.reference_size, after=after,
                                                  before=end)
        if len(traffic) < d.min_window:
            return traffic, onset, None  # the training rows, then; nothing published that a later check would keep
        if _publish(settings, store, name, traffic[TRAFFIC_COLUMNS]):
            return traffic, onset, name
        published = _read_published(store, name)  # another host published first: every host checks against theirs
        if published is None:
            return traffic, onset, None
    if len(published) > d.reference_size:  # published at a larger drift.reference_size: its newest rows, on every host
        published = published.sort_values("created_at", ascending=False, kind="stable").head(d.reference_size)
    starts = published["created_at"].min() if len(published) else None
    # both aware UTC: the database's times read back so on SQLite and PostgreSQL, and parquet keeps the zone
    return published, (onset if onset is not None and starts is not None and starts >= onset else None), name


def _read_published(store: ArtifactStore, name: str) -> pd.DataFrame | None:
    """A published traffic reference; None when none was published. A store that cannot be read, or a damaged
    file, fails the check (ArtifactError): rebuilt from a pruned log, the reference would be other rows, and the
    cache would keep them for the champion's life."""
    data = store.shared_read(name)
    if data is None:
        return None
    try:
        return pd.read_parquet(io.BytesIO(data))[TRAFFIC_COLUMNS]
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(SHARED_DIR, f"{store.uri(SHARED_DIR)}/{name} is not a drift reference "
                                        f"({type(exc).__name__}: {exc}); delete it to have it built again") from None


def _publish(settings: Settings, store: ArtifactStore, name: str, traffic: pd.DataFrame) -> bool:
    """Publish the traffic rows beside the models unless another host did first; True when this call did. A
    failure to write is a warning: this host's checks keep the rows in their cache, another host may publish."""
    folder = settings.home / "drift"
    scratch = folder / f"{CACHE_SCRATCH_PREFIX}{name}.{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        traffic.to_parquet(scratch, index=False)
        if not store.shared_add(scratch, name):
            return False
        log.info("drift reference published: %s, %d rows of production traffic", name, len(traffic))
        return True
    except (ArtifactError, OSError) as exc:
        log.warning("could not publish the drift reference %s (%s: %s)", name, type(exc).__name__, exc)
        return False
    finally:
        scratch.unlink(missing_ok=True)


def drift_onset(session: Session, version: str, *, before: Any) -> Any:
    """Where the drift that ``version``'s last checks before ``before`` found began; None when the last of
    them found no drift.

    The unbroken run of checks whose own finding was "drifted" (hysteresis aside; checks with too little
    data neither break nor join it) ends with the last check before ``before``. The drift began after the
    clean check before that run — its window's end — and no earlier than the first drifted window's
    start: a window is the newest rows, so the first window to find a shift mostly holds the traffic
    before it. With no clean check on record, the first drifted window's start."""
    checks = session.scalars(select(DriftCheck).where(DriftCheck.model_version == version,
                                                      DriftCheck.verdict != "insufficient_data",
                                                      col(DriftCheck.created_at) < before)
                             .order_by(col(DriftCheck.id).desc()).limit(500)).all()
    onset = None
    for check in checks:
        if (check.signals.get("_verdict") or {}).get("found", check.verdict) != "drifted":
            return max(onset, check.window_end) if onset is not None and check.window_end is not None else onset
        onset = check.window_start
    return onset
