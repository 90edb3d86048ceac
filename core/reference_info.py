"""Where the reference dataset lives and what describes it, without reading its rows.

The rows are published beside the model versions (``<storage.models_url>/reference/``: the
``reference-<hash>.parquet`` file and this ``reference.json``, put last) so every host that reads the
models reads the same reference; each home keeps a copy in ``<home>/data``. Kept apart from
:mod:`refitd.core.reference` so the long-lived daemon process (the refit triggers compare a candidate's
reference digest with the current one) reads ``reference.json`` without importing pandas.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from refitd.core.artifacts import KEEP_S, ArtifactStore
from refitd.core.files import untouched_since
from refitd.core.errors import ArtifactError, ConfigError
from refitd.core.settings import Settings
from refitd.core.shared_folder import SHARED_DIR

log = logging.getLogger(__name__)

DATA_DIR = "data"
META_FILE = "reference.json"
SCRATCH_PREFIX = ".reference"  # every scratch file a write in the home's data folder makes starts so


class ReferenceInfo(BaseModel):
    """What ``refitd data show`` prints, stored beside the rows."""

    source: str = Field(description="The file it was read from, or 'bundled corpus (topics …)'.")
    file: str = Field(pattern=r"^reference-[0-9a-f]{16}\.parquet$",
                      description="The rows' Parquet file in <home>/data (and in the store's reference/), named by "
                                  "its hash (by its digest for a reference stored before files were hashed).")
    digest: str = Field(description="SHA-256 over its (text, label) rows, independent of order.")
    sha256: str | None = Field(default=None, description="SHA-256 of the rows file's bytes (splits included); "
                               "the file's name carries its first 16 digits. None for a reference stored before.")
    rows: int
    labels: dict[str, int] = Field(description="Rows per label.")
    splits: dict[str, int] = Field(description="Rows per split: train, validation, test (the frozen set).")
    stored_at: datetime
    actor: str
    reason: str
    new_label_set_for: str | None = Field(default=None, description="Stored by `data replace --new-label-set` while "
                                          "this version was champion: its refits may train a label set it does not answer.")


def folder(settings: Settings) -> Path:
    return settings.home / DATA_DIR


def sweep(settings: Settings, *, older_than_s: float = KEEP_S) -> list[Path]:
    """Remove what a process killed mid-write left in this home's reference folder: its scratch files (every write
    goes to a hidden ``.reference…`` file and is renamed into place), untouched for ``older_than_s``. Nothing else
    there is touched (another hidden file may be a user's, or an NFS client's ``.nfs…`` for a file still open)."""
    out = folder(settings)
    cutoff = time.time() - older_than_s
    stale = [p for p in out.iterdir() if p.name.startswith(SCRATCH_PREFIX) and untouched_since(p, cutoff, folder=False)] \
        if out.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
        log.warning("removed unfinished reference file %s", p)
    return stale


def info(settings: Settings) -> ReferenceInfo | None:
    """This home's reference description, or None before the first use; ConfigError when it cannot be read."""
    path = folder(settings) / META_FILE
    try:
        return ReferenceInfo.model_validate_json(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as exc:
        problem = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise ConfigError(f"{path} is not a reference description ({problem}): restore it, or run `refitd data "
                          "replace FILE`") from None


def published(settings: Settings) -> ReferenceInfo | None:
    """The reference published beside the models, or None when none was; ArtifactError when the store cannot
    be read."""
    store = ArtifactStore.from_settings(settings)
    text = store.shared_read(META_FILE)
    if text is None:
        return None
    try:
        return ReferenceInfo.model_validate_json(text)
    except ValidationError as exc:
        raise ArtifactError(SHARED_DIR, f"{store.uri(SHARED_DIR)}/{META_FILE} is not a reference description: "
                                         f"{exc.errors()[0]['msg']}") from None


def current(settings: Settings) -> ReferenceInfo | None:
    """The reference the next refit reads: the published one, else this home's (the store cannot be reached,
    or nothing was published yet)."""
    try:
        shared = published(settings)
    except ArtifactError as exc:
        log.warning("cannot read the published reference (%s); using this home's", exc.problem)
        shared = None
    if shared is not None:
        return shared
    try:
        return info(settings)
    except ConfigError as exc:
        log.warning("%s", exc)
        return None
