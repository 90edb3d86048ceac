"""The alert outbox: webhook alerts stored with what they report, then delivered until they get through.

``enqueue`` adds an alert in the caller's transaction, so a drift check's verdict change or a rollback is never
recorded without its page, whatever happens to the process or the receiver next. A sender (the check's process
at once, the daemon's ``alert_delivery`` job after that, on any host) takes the oldest undelivered alert with one
conditional UPDATE (``claim_head``): alerts go out in the order they were raised, by one sender at a time. A
sender killed mid-delivery holds its claim only until ``claimed_until``, so delivery is at least once, and a
receiver can drop repeats by the ``alert_id`` every delivery carries.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, or_, text, update
from sqlmodel import Session, col, select

from refitd.core import registry
from refitd.core.db import db_now, session_scope
from refitd.core.tables import Alert

PENDING, DELIVERED, GIVEN_UP = "pending", "delivered", "given_up"


# PostgreSQL advisory lock key ("refitd" and 1): one transaction at a time raises alerts (``serialize``)
ALERT_LOCK = 0x726566697464_0001


def serialize(session: Session) -> None:
    """Hold the alert lock until the caller's transaction ends (PostgreSQL; SQLite has one writer at a time). Alerts
    are then committed in the order of their ids — a sender takes the oldest committed one, and an alert that got
    its id first but committed after a newer one would go out after it — and a check that reads the last verdict
    under it knows no other check's verdict is about to land before its own."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ALERT_LOCK})


def enqueue(session: Session, *, kind: str, subject: str | None, payload: dict[str, Any]) -> Alert:
    """Add an alert to the outbox, committed with the caller's transaction (under the alert lock: ids in commit
    order); due now by the database's clock (a host whose clock ran fast would otherwise hold every alert behind
    this one back for as long as it is off)."""
    serialize(session)
    now = db_now(session)
    alert = Alert(kind=kind, subject=subject, payload=payload, created_at=now, next_attempt_at=now)
    session.add(alert)
    session.flush()
    return alert


def rollback_payload(previous: str, restored: str, why: str) -> dict[str, Any]:
    """What a rollback's alert says (Slack-compatible ``text``)."""
    return {"text": f":rewind: refitd rolled back from {previous} to {restored}: {why}", "event": "rolled_back",
            "from": previous, "to": restored, "reason": why}


def claim_head(engine: Engine, *, holder: str, hold_s: float, give_up_after: timedelta,
               now_due: bool = False) -> Alert | None:
    """The oldest undelivered alert, claimed by ``holder`` for ``hold_s`` seconds; None when there is none, another
    sender holds it, or its next attempt is not due yet (``now_due``: try it now anyway — a new alert came). A head
    raised longer than ``give_up_after`` ago that nobody holds is given up here (never sent that late) and the next
    one looked at; one that another sender holds still holds the rest back, so the order is kept. Claims are timed
    by the database's clock (``db_now``), so hosts whose clocks differ agree on who holds one."""
    with session_scope(engine) as session:
        while True:
            now = db_now(session)
            head = session.exec(select(Alert).where(Alert.status == PENDING).order_by(col(Alert.id))).first()
            if head is None:
                return None
            if head.created_at >= now - give_up_after:
                break
            if not _give_up(session, head, now, give_up_after):
                return None  # another sender holds it
        if not now_due and head.next_attempt_at > now:
            return None
        taken = session.execute(
            update(Alert).where(col(Alert.id) == head.id, col(Alert.status) == PENDING,
                                or_(col(Alert.claimed_until).is_(None), col(Alert.claimed_until) < now))
            .values(claimed_by=holder, claimed_until=now + timedelta(seconds=hold_s)))
        if taken.rowcount != 1:
            return None
        session.refresh(head)
        return head


def give_up_expired(engine: Engine, give_up_after: timedelta) -> int:
    """Give up the waiting alerts raised longer than ``give_up_after`` ago that no sender holds (each an
    ``alert_failed`` event): a page days late misleads more than it helps. Runs without a receiver too (retention)."""
    with session_scope(engine) as session:
        now = db_now(session)
        expired = session.exec(select(Alert).where(Alert.status == PENDING,
                                                   col(Alert.created_at) < now - give_up_after)).all()
        return sum(_give_up(session, alert, now, give_up_after) for alert in expired)


def _give_up(session: Session, alert: Alert, now: datetime, give_up_after: timedelta) -> bool:
    """Give up ``alert`` unless a sender holds it (it may be getting through right now); True when given up."""
    if session.execute(update(Alert).where(col(Alert.id) == alert.id, col(Alert.status) == PENDING,
                                           or_(col(Alert.claimed_until).is_(None), col(Alert.claimed_until) < now))
                       .values(status=GIVEN_UP, claimed_by=None, claimed_until=None)).rowcount != 1:
        return False
    registry.record_event(session, kind="alert_failed", subject=str(alert.id), actor="alerts",
                          reason=f"alert {alert.id} ({alert.kind}) given up: not delivered within "
                                 f"{_hours(give_up_after)} ({alert.attempts} tries; last error: "
                                 f"{alert.last_error or 'none, never sent'})", data={"alert": alert.payload})
    return True


def mark_delivered(engine: Engine, alert: Alert, *, holder: str, tries: int, shown: str) -> bool:
    """The alert got through; an alert that had failed before says so in an event. False when the claim was lost
    (it lapsed and another sender took the alert: it may be delivered twice, never lost)."""
    with session_scope(engine) as session:
        now = db_now(session)
        done = session.execute(
            update(Alert).where(col(Alert.id) == alert.id, col(Alert.claimed_by) == holder)
            .values(status=DELIVERED, delivered_at=now, attempts=alert.attempts + tries, claimed_by=None,
                    claimed_until=None)).rowcount == 1
        if done and alert.attempts:
            late = (now - alert.created_at).total_seconds() / 60
            registry.record_event(session, kind="alert_delivered", subject=str(alert.id), actor="alerts",
                                  reason=f"alert {alert.id} ({alert.kind}) reached {shown} after "
                                         f"{alert.attempts + tries} tries, {late:.1f} min after it was raised")
        return done


def mark_failed(engine: Engine, alert: Alert, *, holder: str, tries: int, error: str, shown: str,
                retry_s: float, give_up_after: timedelta, permanent: bool = False) -> str | None:
    """A delivery round failed: the alert waits ``retry_s`` for its next round, or is given up — at once when the
    receiver refused it for good (``permanent``), else once it is older than ``give_up_after``. The first failure
    and the giving up are events. Returns the alert's status, or None when the claim was lost (nothing written)."""
    attempts = alert.attempts + tries
    with session_scope(engine) as session:
        now = db_now(session)
        given_up = permanent or now - alert.created_at >= give_up_after
        status = GIVEN_UP if given_up else PENDING
        if session.execute(
                update(Alert).where(col(Alert.id) == alert.id, col(Alert.claimed_by) == holder)
                .values(status=status, attempts=attempts, last_error=error, claimed_by=None, claimed_until=None,
                        next_attempt_at=now + timedelta(seconds=retry_s))).rowcount != 1:
            return None
        what = f"alert {alert.id} ({alert.kind}) to {shown}"
        if given_up:
            why = "refused for good" if permanent else f"given up after {attempts} tries over {_hours(now - alert.created_at)}"
            registry.record_event(session, kind="alert_failed", subject=str(alert.id), actor="alerts",
                                  reason=f"{what} {why}: {error}", data={"alert": alert.payload})
        elif not alert.attempts:
            registry.record_event(session, kind="alert_delayed", subject=str(alert.id), actor="alerts",
                                  reason=f"{what} failed after {tries} tries: {error}; retried until "
                                         f"{alert.created_at + give_up_after:%Y-%m-%d %H:%M} UTC")
    return status


def waiting(session: Session) -> dict[str, Any] | None:
    """Undelivered alerts: how many, since when, the oldest one's tries and last error; None when there are none."""
    count, oldest = session.execute(select(func.count(), func.min(Alert.created_at))
                                    .where(Alert.status == PENDING)).one()
    if not count:
        return None
    head = session.exec(select(Alert).where(Alert.status == PENDING).order_by(col(Alert.id))).first()
    return {"count": int(count), "oldest": oldest, "attempts": head.attempts if head else 0,
            "last_error": head.last_error if head else None,
            "next_attempt_at": head.next_attempt_at if head else None}


def prune(engine: Engine, cutoff: datetime) -> int:
    """Delete delivered and given-up alerts raised before ``cutoff``; pending ones are kept whatever their age."""
    with session_scope(engine) as session:
        return session.execute(delete(Alert).where(col(Alert.status).in_([DELIVERED, GIVEN_UP]),
                                                   col(Alert.created_at) < cutoff)).rowcount


def _hours(span: timedelta) -> str:
    seconds = span.total_seconds()
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min" if seconds >= 60 else \
        f"{seconds:.0f} s"
