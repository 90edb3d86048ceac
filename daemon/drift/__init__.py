"""The drift check: Evidently signals and the verdict (``signals``), checks over logged
predictions with reports and history (``check``), webhook alerts (``alerts``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from refitd.core.artifacts import KEEP_S
from refitd.core.files import untouched_since
from refitd.core.settings import Settings

log = logging.getLogger(__name__)

CACHE_SCRATCH_PREFIX = ".reference-"  # a check writes its reference cache to such a hidden file, then renames it
CACHE_PREFIX = "reference-"  # <home>/drift/reference-<version><suffix>: a champion's scored reference and what goes with it
CACHE_SUFFIXES = (".parquet", ".json", ".calibration.json", ".calibration.partial")
TRAFFIC_PREFIX = "drift-traffic-"  # a champion's published traffic reference: drift-traffic-<version>-<digest>.parquet


def cache_file(settings: Settings, version: str, suffix: str) -> Path:
    """One file of this host's reference cache for ``version``: its rows (``.parquet``), where they came from
    (``.json``), its calibration (``.calibration.json``; ``.calibration.partial`` is what an older refitd killed
    mid-write left, which retention still takes)."""
    return settings.home / "drift" / f"{CACHE_PREFIX}{version}{suffix}"


def sweep(settings: Settings, *, older_than_s: float = KEEP_S) -> list[Path]:
    """Remove the reference-cache scratch files a check killed mid-write (its timeout, a daemon stop) left in
    ``<home>/drift``, untouched for ``older_than_s``; nothing else there is touched. Light: no pandas, no Evidently."""
    folder = settings.home / "drift"
    cutoff = time.time() - older_than_s
    stale = [p for p in folder.iterdir() if p.name.startswith(CACHE_SCRATCH_PREFIX)
             and untouched_since(p, cutoff, folder=False)] if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
        log.warning("removed unfinished drift reference cache %s", p)
    return stale
