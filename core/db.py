"""Database engines and schema migrations.

SQLite (WAL, the embedded default) and PostgreSQL (``postgresql+psycopg://``)
through one factory; the schema is applied with Alembic, never ``create_all``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlmodel import Session

from refitd.core.settings import Settings

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")

_engines: dict[tuple[str, bool, float], Engine] = {}
_engines_lock = threading.Lock()


def engine_for(settings: Settings) -> Engine:
    """This process's one engine (and connection pool) for the configured database.

    Every part of a process — the serving log, the scheduler's job store, the launcher, the
    CLI commands — shares it, so a daemon holds one pool, not one per component.
    """
    db = settings.database
    key = (settings.database_url, db.echo, db.timeout_s)
    with _engines_lock:
        if key not in _engines:
            _engines[key] = make_engine(settings.database_url, echo=db.echo, busy_timeout_s=db.timeout_s)
        return _engines[key]


def make_engine(url: str, *, echo: bool = False, busy_timeout_s: float = 30.0) -> Engine:
    """Build an engine; for SQLite create the folder and switch on WAL and a busy timeout."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"timeout": busy_timeout_s, "check_same_thread": False})
        _configure_sqlite(engine, busy_timeout_s)
        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=5, max_overflow=5,
                         connect_args={"connect_timeout": max(1, int(busy_timeout_s))})


def _configure_sqlite(engine: Engine, busy_timeout_s: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy, not pysqlite, decide when transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        # IMMEDIATE: take the write lock up front. A deferred transaction that reads and then writes
        # fails at once with "database is locked" when another process wrote in between (the busy
        # timeout does not apply to that upgrade); an immediate one waits its turn instead.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def db_now(session: Session) -> datetime:
    """Now by the database's clock on PostgreSQL, the one clock every host that shares it reads; this host's on
    SQLite, which serves one host. Leases and alert claims compare times that different hosts wrote: by their
    own clocks, a host a minute fast would take a lease or a claim another host still holds. The statement's time,
    not ``now()``'s transaction start: a caller's transaction that ran a while first is not back-dated."""
    if session.get_bind().dialect.name == "postgresql":
        return session.execute(text("SELECT statement_timestamp()")).scalar_one().astimezone(timezone.utc)
    return datetime.now(timezone.utc)


def _alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Apply migrations up to ``revision``; return the revision the database is at."""
    command.upgrade(_alembic_config(engine), revision)
    return current_revision(engine)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_alembic_config(create_engine("sqlite://"))).get_current_head()
