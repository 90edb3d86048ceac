"""Named leases: a lock row that expires unless its holder renews it.

Taking a lease is one conditional UPDATE (free, expired, or already ours), so two
processes on two hosts sharing the database cannot both win it, and a holder that
was killed stops blocking everyone once its lease runs out.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, or_, update
from sqlmodel import col

from refitd.core.db import db_now, session_scope
from refitd.core.errors import LeaseTakenError
from refitd.core.tables import Lease

log = logging.getLogger(__name__)

REFIT = "refit"  # one refit at a time, whoever starts it: the daemon's launcher, `refitd refit`, `refitd init`


def holder_name() -> str:
    """This process, as a lease holder: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def acquire(engine: Engine, name: str, *, holder: str, ttl_s: float, data: dict[str, Any] | None = None) -> bool:
    """Take the lease if it is free, expired or already ours; True when we hold it now."""
    with session_scope(engine) as session:
        now = db_now(session)
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
    with session_scope(engine) as session:
        values: dict[str, Any] = {"expires_at": db_now(session) + timedelta(seconds=ttl_s)}
        if data is not None:
            values["data"] = data
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
        if lease.expires_at < db_now(session):
            return None
        session.expunge(lease)
        return lease


@contextmanager
def held(engine: Engine, name: str, *, holder: str, ttl_s: float, data: dict[str, Any] | None = None
         ) -> Iterator[threading.Event]:
    """Hold the lease for the block: taken at once (:class:`LeaseTakenError` naming its holder when someone else
    has it), renewed every third of ``ttl_s`` by a background thread, released at the end. The event it yields
    is set if the lease was lost meanwhile (renewals failed until it expired and another process took it)."""
    if not acquire(engine, name, holder=holder, ttl_s=ttl_s, data=data):
        taken = current(engine, name)
        raise LeaseTakenError(name, taken.holder if taken else "another process",
                              f"{taken.expires_at:%H:%M:%S}" if taken and taken.expires_at else None)
    lost, stop = threading.Event(), threading.Event()

    def keep() -> None:
        while not stop.wait(ttl_s / 3):
            try:
                if not renew(engine, name, holder=holder, ttl_s=ttl_s):
                    log.error("the %s lease was lost (it expired and another process took it)", name)
                    lost.set()
                    return
            except Exception:  # noqa: BLE001 - a store that is down now may answer at the next renewal
                log.exception("could not renew the %s lease; it expires in at most %.0f s", name, ttl_s)

    keeper = threading.Thread(target=keep, name=f"lease-{name}", daemon=True)
    keeper.start()
    try:
        yield lost
    finally:
        stop.set()
        keeper.join(timeout=10)
        try:
            release(engine, name, holder=holder)
        except Exception:  # noqa: BLE001 - an unreleased lease expires on its own
            log.exception("could not release the %s lease; it expires in %.0f s", name, ttl_s)
