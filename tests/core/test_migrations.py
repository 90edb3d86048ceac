"""The Alembic migrations build exactly the schema the SQLModel tables describe, and datetimes come back aware UTC.

Each test runs on SQLite in ``tmp_path`` and on a fresh PostgreSQL database (the ``engine`` fixture in
``tests/conftest.py`` upgrades it with ``refitd.core.db.upgrade``).

The comparison ignores nothing of its own. Two tables it could meet, and why neither shows up:
- ``alembic_version`` is Alembic's bookkeeping; ``compare_metadata`` skips the context's version table itself.
- ``apscheduler_jobs`` (``daemon.jobs.JOB_TABLE``) is created by APScheduler's ``SQLAlchemyJobStore`` on its own
  ``MetaData`` when the daemon starts, not by a migration nor by ``SQLModel.metadata``; a freshly upgraded
  database does not have it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import DateTime
from sqlalchemy.exc import StatementError
from sqlmodel import SQLModel, UTCDateTime, select

from refitd.core.db import current_revision, head_revision, session_scope
from refitd.core.tables import Event, Lease

PLUS_TWO = timezone(timedelta(hours=2))


def test_migrations_match_tables(engine) -> None:
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        diff = compare_metadata(context, SQLModel.metadata)
    assert diff == []


def test_every_datetime_column_is_utc() -> None:
    """A column declared as a plain DateTime would make the same DDL (so the diff above passes) but read back naive."""
    columns = [column for table in SQLModel.metadata.sorted_tables for column in table.columns]
    datetimes = [c for c in columns if isinstance(c.type, DateTime) or isinstance(getattr(c.type, "impl", None), DateTime)]
    assert len(datetimes) >= 13  # every created_at, window, finish, promotion, lease and lock time
    assert [f"{c.table.name}.{c.name}" for c in datetimes if not isinstance(c.type, UTCDateTime)] == []


def test_datetime_reads_back_aware_utc(engine) -> None:
    written = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=PLUS_TWO)
    with session_scope(engine) as s:
        s.add(Event(kind="test", created_at=written))
    with session_scope(engine) as s:
        event = s.exec(select(Event).where(Event.kind == "test")).one()
        # A filter bound in another zone is converted to UTC too, so it finds the same instant.
        hits = s.exec(select(Event.id).where(Event.created_at == written)).all()
    assert event.created_at.tzinfo is UTC
    assert event.created_at == written
    assert event.created_at.hour == 10
    assert hits == [event.id]


def test_nullable_datetime_reads_back_aware_utc(engine) -> None:
    """The leases table comes from migration 0002, seeded with a NULL expiry; a written one reads back aware."""
    with session_scope(engine) as s:
        lease = s.get(Lease, "refit")
        assert lease.expires_at is None
        lease.expires_at = datetime(2026, 3, 1, 23, 0, tzinfo=PLUS_TWO)
    with session_scope(engine) as s:
        expires = s.get(Lease, "refit").expires_at
    assert expires.tzinfo is UTC
    assert expires == datetime(2026, 3, 1, 21, 0, tzinfo=UTC)


def test_naive_datetime_is_refused(engine) -> None:
    """A naive time is not guessed to be UTC: the write fails and says so."""
    with pytest.raises(StatementError, match="timezone information"), session_scope(engine) as s:
        s.add(Event(kind="naive", created_at=datetime(2026, 3, 1, 12, 0)))
