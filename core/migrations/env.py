"""Alembic environment: runs on the engine handed over by core.db (no alembic.ini)."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import refitd.core.tables  # noqa: F401  (registers the tables on SQLModel.metadata)

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    engine = config.attributes["engine"]
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("refitd applies migrations online only: run `refitd db upgrade`")
run_migrations_online()
