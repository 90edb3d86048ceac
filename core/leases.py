"""Named leases: a lock row that expires unless its holder renews it.

Taking a lease is one conditional UPDATE (free, expired, or already ours), so two
processes on two hosts sharing the database cannot both win it, and a holder that
was killed stops blocking everyone once its lease runs out.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, or_, update
from sqlmodel import col

from refitd.core.db import session_scope
from refitd.core.tables import Lease, utcnow


def holder_name() -> str:
    """This process, as a lease holder: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def acquire(engine: Engine, name: str, *, holder: str, ttl_s: float, data: dict[str, Any] | None = None) -> bool:
    """Take the lease if it is free, expired or already ours; True when we hold it now."""
    now = utcnow()
    with session_scope(engine) as session:
        if session.get(Lease, name) is None:  # a lease name without its row yet
            session.add(Lease(name=name))
            session.flush()
        result = session.execute(
            update(Lease)
            .where(col(Lease.name) == name,
                   or_(col(Lease.holder).is_(None), col(Lease.expires_at) < now, col(Lease.holder) == holder))
            .values(holder=holder, acquired_at=now, expires_at=now + timedelta(seconds=ttl_s), data=data or {})
        )
        return result.rowcount == 1


def renew(engine: Engine, name: str, *, holder: str, ttl_s: float, data: dict[str, Any] | None = None) -> bool:
    """Push our lease's expiry out; False when it is no longer ours (it expired and someone took it)."""
    values: dict[str, Any] = {"expires_at": utcnow() + timedelta(seconds=ttl_s)}
    if data is not None:
        values["data"] = data
    with session_scope(engine) as session:
        result = session.execute(
            update(Lease).where(col(Lease.name) == name, col(Lease.holder) == holder).values(**values)
        )
        return result.rowcount == 1


def release(engine: Engine, name: str, *, holder: str) -> bool:
    """Give the lease up if we hold it."""
    with session_scope(engine) as session:
        result = session.execute(
            update(Lease).where(col(Lease.name) == name, col(Lease.holder) == holder)
            .values(holder=None, expires_at=None)
        )
        return result.rowcount == 1


def current(engine: Engine, name: str) -> Lease | None:
    """The lease's row when someone holds it unexpired, else None."""
    with session_scope(engine) as session:
        lease = session.get(Lease, name)
        if lease is None or lease.holder is None or lease.expires_at is None:
            return None
        if lease.expires_at < utcnow():
            return None
        session.expunge(lease)
        return lease
