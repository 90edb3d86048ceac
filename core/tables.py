"""SQLModel tables: one class per entity.

The schema itself is owned by the Alembic migrations in ``core/migrations``;
these classes must match them: ``tests/core/test_migrations.py`` upgrades a fresh
SQLite and PostgreSQL database and asserts Alembic's autogenerate finds no difference.

Every ``datetime`` field is stored through SQLModel's ``UTCDateTime`` (what SQLModel
≥ 0.0.45 picks for a ``datetime`` annotation): a ``TIMESTAMP WITH TIME ZONE`` column
that stores UTC and always reads back an aware UTC datetime, on SQLite (which keeps no
offset) as on PostgreSQL. Writing a naive datetime is refused (``ValueError``, raised by
SQLAlchemy as ``StatementError``) rather than guessed to be UTC: build times with
``utcnow()``.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Column, Index, LargeBinary, text
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_prediction_id() -> str:
    return uuid.uuid4().hex


#: The longest label a label column holds (``VARCHAR(64)``); requests with a longer one are refused as 422.
LABEL_MAX_CHARS = 64

class VersionStatus(str, enum.Enum):
    candidate = "candidate"
    champion = "champion"
    archived = "archived"
    rejected = "rejected"
    shadow = "shadow"  # passed the offline gate; scoring live traffic beside the champion until its verdict


class ModelVersion(SQLModel, table=True):
    """One trained model: what it is, where it came from, how good it is."""

    __tablename__ = "model_versions"
    __table_args__ = (
        # The database itself allows at most one champion (SQLite and PostgreSQL partial index).
        Index(
            "ix_model_versions_one_champion",
            "status",
            unique=True,
            sqlite_where=text("status = 'champion'"),
            postgresql_where=text("status = 'champion'"),
        ),
        # …and at most one version in shadow.
        Index(
            "ix_model_versions_one_shadow",
            "status",
            unique=True,
            sqlite_where=text("status = 'shadow'"),
            postgresql_where=text("status = 'shadow'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    version: str = Field(index=True, unique=True, max_length=32)
    status: str = Field(default=VersionStatus.candidate.value, max_length=16, index=True)
    parent: str | None = Field(default=None, max_length=32)
    artifact_uri: str | None = Field(default=None, max_length=1024)
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    data_digest: str | None = Field(default=None, max_length=128)
    data_counts: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    gate_reason: str | None = None
    flow_run_id: str | None = Field(default=None, max_length=64)
    code_version: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    promoted_at: datetime | None = None

    # ``metrics`` has one layout, written by the refit flow: {"candidate": {"frozen", "recent",
    # "baseline", "frozen_int8", …}, "champion": {…} | None, "before", "calibration", timings, …}.

    @property
    def frozen_scores(self) -> dict[str, Any]:
        """This version's scores on the frozen test set ({} when it has none)."""
        m = self.metrics or {}
        return (m.get("candidate") or {}).get("frozen") or m.get("test") or {}  # "test": rows written before 0.2

    @property
    def baseline_scores(self) -> dict[str, Any]:
        """The majority-class baseline on the same frozen test set."""
        m = self.metrics or {}
        return (m.get("candidate") or {}).get("baseline") or m.get("majority_baseline") or {}


class Prediction(SQLModel, table=True):
    """One answered text, logged for drift checks and for joining feedback labels."""

    __tablename__ = "predictions"

    id: str = Field(default_factory=new_prediction_id, primary_key=True, max_length=32)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    model_version: str = Field(index=True, max_length=32)
    text: str
    label: str = Field(max_length=LABEL_MAX_CHARS)
    scores: dict[str, float] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    confidence: float
    latency_ms: float
    embedding: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))


class Feedback(SQLModel, table=True):
    """A ground-truth label, for a logged prediction or for a bare text."""

    __tablename__ = "feedback"

    id: int | None = Field(default=None, primary_key=True)
    prediction_id: str | None = Field(default=None, index=True, unique=True, max_length=32)
    text: str | None = None
    label: str = Field(max_length=LABEL_MAX_CHARS)
    source: str = Field(default="api", max_length=32)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    # when a source that does not measure (serving.feedback_measure_sources) first labelled the prediction: the
    # row keeps only the newest label and source, and such a correction may have trained a model since
    corrected_at: datetime | None = None


class ShadowScore(SQLModel, table=True):
    """A shadow version's answer to a request the champion answered (joined to it by ``prediction_id``)."""

    __tablename__ = "shadow_scores"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    version: str = Field(index=True, max_length=32)
    prediction_id: str = Field(index=True, max_length=32)
    label: str = Field(max_length=LABEL_MAX_CHARS)
    confidence: float


class DriftCheck(SQLModel, table=True):
    """One drift check over a window of production traffic."""

    __tablename__ = "drift_checks"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    model_version: str | None = Field(default=None, max_length=32)
    window_start: datetime | None = None
    window_end: datetime | None = None
    window_size: int = 0
    verdict: str = Field(max_length=32)
    signals: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    reason: str = ""
    report_path: str | None = Field(default=None, max_length=1024)
    duration_s: float | None = None


class RefitRun(SQLModel, table=True):
    """One run of the training flow (the first fit or a refit) and its outcome."""

    __tablename__ = "refit_runs"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    finished_at: datetime | None = None
    trigger: str = Field(max_length=32)
    status: str = Field(default="running", max_length=16, index=True)
    flow_run_id: str | None = Field(default=None, max_length=64)
    candidate_version: str | None = Field(default=None, max_length=32)
    verdict: str | None = Field(default=None, max_length=16)
    reason: str | None = None
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Event(SQLModel, table=True):
    """The audit trail: what happened, to what, who did it and why, in words."""

    __tablename__ = "events"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    kind: str = Field(index=True, max_length=64)
    subject: str | None = Field(default=None, max_length=128)
    actor: str = Field(default="refitd", max_length=64)
    reason: str = ""
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class RegistryLock(SQLModel, table=True):
    """A single row every registry write updates first, serialising them across processes."""

    __tablename__ = "registry_lock"

    id: int = Field(default=1, primary_key=True)
    holder: str | None = Field(default=None, max_length=128)
    held_at: datetime | None = None


class Lease(SQLModel, table=True):
    """A named lock with an expiry: held while renewed, free again once its holder stops renewing it."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True, max_length=64)
    holder: str | None = Field(default=None, max_length=128)
    acquired_at: datetime | None = None
    expires_at: datetime | None = None
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Alert(SQLModel, table=True):
    """A webhook alert waiting to be delivered, or delivered, or given up: the outbox.

    Added in the transaction that records what it reports (a drift check's row, a rollback), so a page is never
    lost to a crash or a receiver that is down; a sender claims it (``claimed_by`` until ``claimed_until``)."""

    __tablename__ = "alerts"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    kind: str = Field(max_length=32)
    subject: str | None = Field(default=None, max_length=128)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(default="pending", max_length=16, index=True)  # pending, delivered, given_up
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow)
    claimed_by: str | None = Field(default=None, max_length=128)
    claimed_until: datetime | None = None
    delivered_at: datetime | None = None
    last_error: str | None = None
