"""Where the home's reference dataset lives and what describes it, without reading its rows.

Kept apart from :mod:`refitd.core.reference` so the long-lived daemon process (the refit triggers compare
a candidate's reference digest with the stored one) reads ``reference.json`` without importing pandas.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field

from refitd.core.settings import Settings

DATA_DIR = "data"
META_FILE = "reference.json"


class ReferenceInfo(BaseModel):
    """What ``refitd data show`` prints, stored beside the rows."""

    source: str = Field(description="The file it was read from, or 'bundled corpus (topics …)'.")
    file: str = Field(description="The rows' Parquet file in <home>/data, named by its digest.")
    digest: str = Field(description="SHA-256 over its (text, label) rows, independent of order.")
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


def info(settings: Settings) -> ReferenceInfo | None:
    """The stored reference's description, or None before the first use."""
    path = folder(settings) / META_FILE
    if not path.is_file():
        return None
    return ReferenceInfo.model_validate_json(path.read_text())
