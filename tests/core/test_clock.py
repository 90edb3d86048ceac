"""Hosts that share PostgreSQL take leases and alert claims by the database's clock, not their own: a host whose
clock runs ten minutes fast must not see another host's live lease or claim as expired. And their alerts commit
in the order of their ids, so a sender never sends a newer one first."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import text

from refitd.core import alerts, db, leases, tables
from refitd.core.db import make_engine, session_scope, upgrade
from refitd.core.settings import Settings
from refitd.daemon.alerts import Sender

DAY = timedelta(hours=24)


class FastClock(datetime):
    """This host's clock, ten minutes ahead of the database's."""

    @classmethod
    def now(cls, tz=None):  # type: ignore[no-untyped-def, override]
        return datetime.now(tz) + timedelta(minutes=10)


def test_a_host_with_a_fast_clock_does_not_take_what_another_holds(postgres_url, tmp_path, monkeypatch) -> None:
    engine = make_engine(postgres_url)
    upgrade(engine)
    assert leases.acquire(engine, "refit", holder="host-a:1", ttl_s=60)
    with session_scope(engine) as session:
        alerts.enqueue(session, kind="drift", subject="1", payload={"text": "drifted"})
    assert alerts.claim_head(engine, holder="host-a:1", hold_s=60, give_up_after=DAY) is not None

    # From here on, this process is the fast host: every clock it reads (tables.utcnow, db_now's fallback) is ahead.
    monkeypatch.setattr(db, "datetime", FastClock)
    monkeypatch.setattr(tables, "datetime", FastClock)
    assert (tables.utcnow() - datetime.now(timezone.utc)).total_seconds() > 500
    with session_scope(engine) as session:
        assert abs((db.db_now(session) - datetime.now(timezone.utc)).total_seconds()) < 5  # the database's time
    assert not leases.acquire(engine, "refit", holder="host-b:2", ttl_s=60)
    held = leases.current(engine, "refit")
    assert held is not None and held.holder == "host-a:1"
    assert alerts.claim_head(engine, holder="host-b:2", hold_s=60, give_up_after=DAY, now_due=True) is None

    # An alert the fast host raises is due at once for a host with the right time, not ten minutes from now.
    with session_scope(engine) as session:
        raised = alerts.enqueue(session, kind="drift", subject="2", payload={"text": "not drifted"})
    assert abs((raised.next_attempt_at - datetime.now(timezone.utc)).total_seconds()) < 5
    # Nor does its own first try call the page late: lateness is the claim's time, by the database, less the raising.
    sender = Sender(Settings.load(home=tmp_path, database={"url": postgres_url},
                                  drift={"webhook_url": "http://127.0.0.1:9/hook"}), engine)
    with session_scope(engine) as session:
        session.execute(text("UPDATE alerts SET status = 'delivered' WHERE subject = '1'"))
    mine = alerts.claim_head(engine, holder=sender.holder, hold_s=sender.hold_s, give_up_after=DAY)
    assert mine is not None and mine.subject == "2"
    assert sender._body(mine)["text"] == "not drifted"
    with session_scope(engine) as session:
        session.execute(text("UPDATE alerts SET claimed_by = NULL, claimed_until = NULL WHERE subject = '2'"))
    monkeypatch.setattr(tables, "datetime", datetime)
    monkeypatch.setattr(db, "datetime", datetime)
    claimed = alerts.claim_head(engine, holder="host-c:3", hold_s=60, give_up_after=DAY)
    assert claimed is not None and claimed.subject == "2"


def test_sqlite_serves_one_host_and_reads_its_clock(sqlite_url, monkeypatch) -> None:
    engine = make_engine(sqlite_url)
    upgrade(engine)
    monkeypatch.setattr(db, "datetime", FastClock)
    with session_scope(engine) as session:
        assert (db.db_now(session) - datetime.now(timezone.utc)).total_seconds() > 500


def test_alerts_commit_in_the_order_of_their_ids(postgres_url) -> None:
    """A sender takes the oldest committed alert: an alert that got its id first but committed after a newer one
    would go out after it. Under the alert lock, a second transaction's alert waits for the first's commit."""
    import threading
    import time

    engine = make_engine(postgres_url)
    upgrade(engine)
    committed: dict[str, float] = {}
    first_in = threading.Event()

    def slow_first() -> None:
        with session_scope(engine) as session:
            alerts.enqueue(session, kind="drift", subject="1", payload={"text": "first"})
            first_in.set()
            time.sleep(1.0)  # the rest of its transaction (a check's row, a rollback's updates)
            committed["first"] = time.monotonic()  # just before its commit

    thread = threading.Thread(target=slow_first)
    thread.start()
    assert first_in.wait(10)
    with session_scope(engine) as session:
        second = alerts.enqueue(session, kind="drift", subject="2", payload={"text": "second"})
        added = time.monotonic()
    thread.join()
    assert added >= committed["first"]  # it waited: nothing newer is committed while an older id is not
    claimed = alerts.claim_head(engine, holder="host-a:1", hold_s=60, give_up_after=DAY)
    assert claimed is not None and claimed.subject == "1" and claimed.id < second.id
