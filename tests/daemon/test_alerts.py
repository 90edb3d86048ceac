"""The alert outbox against real local receivers: an alert is stored with what it reports and delivered once the
receiver answers, in the order raised; a receiver that stays down only costs events and, past
drift.webhook_give_up_hours, the alert; two senders never send one alert at once; and the URL (a secret: a Slack
webhook URL is its own key) never reaches a log, an event or `refitd status`."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from datetime import timedelta
from types import SimpleNamespace

import pytest
from rich.console import Console
from sqlmodel import select

from refitd.core import alerts
from refitd.core.db import engine_for, session_scope, upgrade
from refitd.core.errors import ConfigError
from refitd.core.settings import Settings
from refitd.core.tables import Alert, Event, utcnow
from refitd.daemon import alerts as delivery
from refitd.daemon import jobs
from refitd.daemon.alerts import Sender
from refitd.daemon.status import gather_status, render_status
from tests.conftest import free_port

DAY = timedelta(hours=24)


class Receiver:
    """A real HTTP server on a loopback port (a free one unless given) that keeps what it is sent."""

    def __init__(self, status: int = 200, path: str = "/hook", port: int = 0) -> None:
        self.received: list[dict] = []
        self.headers: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append(json.loads(body))
                outer.headers.append(dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _settings(tmp_path, url: str, db_url: str | None = None, **drift) -> Settings:  # type: ignore[no-untyped-def]
    settings = Settings.load(home=tmp_path, serving={"port": free_port()},
                             drift={"webhook_url": url, "webhook_timeout_s": 1.0, "webhook_retries": 2, **drift},
                             **({"database": {"url": db_url}} if db_url else {}))
    upgrade(engine_for(settings))
    return settings


def _raise(settings: Settings, *texts: str) -> list[int]:
    """Alerts stored the way a check stores them: in a transaction, before anything is sent."""
    with session_scope(engine_for(settings)) as session:
        return [alerts.enqueue(session, kind="drift", subject=str(i), payload={"text": text, "check_id": i}).id
                for i, text in enumerate(texts, 1)]


def _outbox(settings: Settings) -> list[Alert]:
    with session_scope(engine_for(settings)) as session:
        return list(session.exec(select(Alert).order_by(Alert.id)).all())


def _events(settings: Settings, kind: str) -> list[Event]:
    with session_scope(engine_for(settings)) as session:
        return list(session.exec(select(Event).where(Event.kind == kind)).all())


def test_an_alert_reaches_a_real_receiver_with_its_id(tmp_path) -> None:
    receiver = Receiver()
    try:
        settings = _settings(tmp_path, receiver.url)
        (alert_id,) = _raise(settings, "drifted")
        Sender(settings, engine_for(settings)).send_soon().join(10)
    finally:
        receiver.close()
    (body,) = receiver.received
    assert body["text"] == "drifted" and body["check_id"] == 1 and body["alert_id"] == alert_id and body["raised_at"]
    assert receiver.headers[0]["Idempotency-Key"] == f"refitd-alert-{alert_id}"
    (row,) = _outbox(settings)
    assert row.status == "delivered" and row.attempts == 1 and row.claimed_by is None
    assert _events(settings, "alert_delivered") == []  # on time: nothing to say


def test_a_receiver_that_was_down_gets_every_alert_in_order_when_it_is_back(tmp_path, db_url, monkeypatch) -> None:
    monkeypatch.setattr(delivery, "FIRST_RETRY_S", 3.0)
    monkeypatch.setattr(delivery, "LATE_S", 0.0)
    port = free_port()
    settings = _settings(tmp_path, f"http://127.0.0.1:{port}/hook", db_url)
    engine = engine_for(settings)
    _raise(settings, "drifted", "not drifted")
    sender = Sender(settings, engine)
    assert sender.deliver(now_due=True) == {"delivered": 0, "failed": 1, "given_up": 0}
    head, second = _outbox(settings)
    assert (head.status, head.attempts, second.status, second.attempts) == ("pending", 2, "pending", 0)
    assert "ConnectError" in head.last_error and head.next_attempt_at > utcnow()
    (delayed,) = _events(settings, "alert_delayed")
    assert delayed.subject == str(head.id) and "failed after 2 tries" in delayed.reason and "retried until" in delayed.reason
    screen = io.StringIO()
    render_status(gather_status(settings), Console(file=screen, width=300))
    assert "alerts not delivered: 2" in screen.getvalue() and "2 tries" in screen.getvalue()

    receiver = Receiver(port=port)
    try:
        assert sender.deliver() == {"delivered": 0, "failed": 0, "given_up": 0}  # its next round is not due yet
        time.sleep(max(0.0, (head.next_attempt_at - utcnow()).total_seconds()) + 0.1)
        # The daemon's job finds it due; a fresh process (the job builds its own sender) sends both, oldest first.
        assert jobs.alert_delivery(SimpleNamespace(settings=settings, engine=engine)) == {
            "delivered": 2, "failed": 0, "given_up": 0}
    finally:
        receiver.close()
    assert [b["text"].split(" (raised")[0] for b in receiver.received] == ["drifted", "not drifted"]
    assert all("delivered late" in b["text"] for b in receiver.received)
    assert [a.status for a in _outbox(settings)] == ["delivered", "delivered"]
    (late,) = _events(settings, "alert_delivered")
    assert late.subject == str(head.id) and "after 3 tries" in late.reason
    assert gather_status(settings)["alerts"] is None


def test_an_alert_nobody_takes_is_given_up_and_the_next_one_goes_out(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(delivery, "FIRST_RETRY_S", 0.0)
    receiver = Receiver(status=503)
    try:
        settings = _settings(tmp_path, receiver.url, webhook_give_up_hours=3 / 3600)  # 3 seconds
        engine = engine_for(settings)
        _raise(settings, "first")
        assert Sender(settings, engine).deliver(now_due=True)["failed"] == 1
        time.sleep(3.1)
        _raise(settings, "second")
        assert Sender(settings, engine).deliver() == {"delivered": 0, "failed": 1, "given_up": 1}
    finally:
        receiver.close()
    first, second = _outbox(settings)
    assert first.status == "given_up" and first.attempts == 2 and first.last_error == "HTTP 503"  # not tried again
    assert second.status == "pending" and second.attempts == 2  # tried once the first was given up
    (failed,) = _events(settings, "alert_failed")
    assert failed.subject == str(first.id)
    assert "given up: not delivered within 3 s (2 tries; last error: HTTP 503)" in failed.reason
    assert failed.data["alert"]["text"] == "first"  # what the page said is kept with the event
    assert alerts.prune(engine, utcnow()) == 1
    assert [a.status for a in _outbox(settings)] == ["pending"]  # a pending alert is never pruned

    # Past its deadline an alert is given up, not sent days late, even once the receiver answers; and the
    # daemon's retention gives it up with no receiver configured at all.
    time.sleep(3.1)
    late = Receiver()
    try:
        hooked = _settings(tmp_path, late.url, webhook_give_up_hours=3 / 3600)
        _raise(hooked, "third")
        assert Sender(hooked, engine).deliver(now_due=True) == {"delivered": 1, "failed": 0, "given_up": 1}
    finally:
        late.close()
    assert [b["text"] for b in late.received] == ["third"]
    assert [a.status for a in _outbox(settings)] == ["given_up", "delivered"]
    expired = [e for e in _events(settings, "alert_failed") if e.subject == str(second.id)]
    assert len(expired) == 1 and "given up: not delivered within 3 s (2 tries; last error: HTTP 503)" in expired[0].reason
    _raise(settings, "fourth")
    time.sleep(3.1)
    unhooked = Settings.load(home=tmp_path, drift={"webhook_give_up_hours": 3 / 3600})
    jobs.retention(SimpleNamespace(settings=unhooked, engine=engine))
    assert _outbox(settings)[-1].status == "given_up"


def test_a_receiver_that_refuses_for_good_is_not_asked_again(tmp_path) -> None:
    receiver = Receiver(status=404)
    try:
        settings = _settings(tmp_path, receiver.url)
        _raise(settings, "first", "second")
        assert Sender(settings, engine_for(settings)).deliver(now_due=True) == {"delivered": 0, "failed": 0,
                                                                                "given_up": 2}
    finally:
        receiver.close()
    assert len(receiver.received) == 2  # one try each: a 404 is not retried for a day
    assert [(a.status, a.attempts) for a in _outbox(settings)] == [("given_up", 1), ("given_up", 1)]
    assert all("refused for good: HTTP 404" in e.reason for e in _events(settings, "alert_failed"))


def test_any_failure_is_a_failed_try_and_names_no_url(tmp_path, monkeypatch) -> None:
    secret = "http://127.0.0.1:9/services/XXXXs3cretXXXX"
    settings = _settings(tmp_path, secret)
    _raise(settings, "drifted")

    def broken(url, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError(f"nothing sensible at {url}")

    monkeypatch.setattr(delivery.httpx, "post", broken)
    assert Sender(settings, engine_for(settings)).deliver(now_due=True)["failed"] == 1  # not an escaped exception
    (alert,) = _outbox(settings)
    assert alert.status == "pending" and alert.attempts == 2 and alert.last_error.startswith("RuntimeError: nothing")
    (event,) = _events(settings, "alert_delayed")
    for shown in (alert.last_error, event.reason):
        assert "s3cret" not in shown and "http://127.0.0.1:9/…" in shown


def test_two_senders_never_hold_one_alert_at_once(tmp_path, db_url) -> None:
    settings = _settings(tmp_path, f"http://127.0.0.1:{free_port()}/hook", db_url)
    engine = engine_for(settings)
    _raise(settings, "only one")
    one, other = Sender(settings, engine), Sender(settings, engine)  # built on one thread, as a job's would be
    assert one.holder != other.holder
    mine = alerts.claim_head(engine, holder=one.holder, hold_s=0.5, give_up_after=DAY)
    assert mine is not None and mine.claimed_by == one.holder
    assert alerts.claim_head(engine, holder=other.holder, hold_s=30, give_up_after=DAY) is None  # held: it waits
    assert alerts.claim_head(engine, holder=one.holder, hold_s=30, give_up_after=DAY, now_due=True) is None  # once
    time.sleep(0.6)
    theirs = alerts.claim_head(engine, holder=other.holder, hold_s=30, give_up_after=DAY)  # the first died: lapsed
    assert theirs is not None and theirs.id == mine.id and theirs.claimed_by == other.holder
    # A lost claim writes nothing: no status, no events (a false "given up" for an alert the other one delivers).
    assert not alerts.mark_delivered(engine, mine, holder=one.holder, tries=1, shown="x")
    assert alerts.mark_failed(engine, mine, holder=one.holder, tries=2, error="HTTP 500", shown="x", retry_s=1,
                              give_up_after=timedelta(0)) is None
    assert _events(settings, "alert_failed") == [] and _events(settings, "alert_delayed") == []
    assert alerts.mark_delivered(engine, theirs, holder=other.holder, tries=1, shown="x")
    assert alerts.claim_head(engine, holder=one.holder, hold_s=30, give_up_after=DAY, now_due=True) is None

    # An alert past its deadline that a sender still holds holds the newer ones back (order kept) and is not
    # given up under it; once that sender's claim lapses, the next claim gives it up and takes the newer one.
    late = timedelta(seconds=0.2)
    _raise(settings, "late")
    held = alerts.claim_head(engine, holder=one.holder, hold_s=0.5, give_up_after=DAY, now_due=True)
    assert held is not None and held.payload["text"] == "late"
    time.sleep(0.3)
    assert alerts.claim_head(engine, holder=other.holder, hold_s=30, give_up_after=late, now_due=True) is None
    assert alerts.give_up_expired(engine, late) == 0 and _events(settings, "alert_failed") == []
    time.sleep(0.3)
    _raise(settings, "after")
    after = alerts.claim_head(engine, holder=other.holder, hold_s=30, give_up_after=late, now_due=True)
    assert after is not None and after.payload["text"] == "after"
    (failed,) = _events(settings, "alert_failed")
    assert failed.subject == str(held.id) and "given up: not delivered within" in failed.reason


def test_a_failing_webhook_never_shows_its_url(tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.WARNING, logger="httpx")  # as configure_logging keeps it: its INFO line has the URL
    receiver = Receiver(status=500, path="/services/T000/B000/XXXXs3cretXXXX")
    try:
        settings = _settings(tmp_path, receiver.url)
        _raise(settings, "drifted")
        Sender(settings, engine_for(settings)).send_soon().join(15)
        assert len(receiver.received) == 2  # it was really sent, and failed twice
    finally:
        receiver.close()
    (event,) = _events(settings, "alert_delayed")
    host = receiver.url.split("/services")[0]
    assert event.reason.startswith(f"alert 1 (drift) to {host}/… failed after 2 tries: HTTP 500; retried until ")
    assert "failed after 2 tries" in caplog.text and f"{host}/…" in caplog.text
    info = gather_status(settings)
    screen = io.StringIO()
    render_status(info, Console(file=screen, width=300))
    assert event.reason in screen.getvalue() and "alerts not delivered: 1" in screen.getvalue()
    for shown in (caplog.text, event.reason, json.dumps(info, default=str), screen.getvalue()):
        assert "s3cret" not in shown and "/services/" not in shown


def test_no_sender_without_a_url(tmp_path) -> None:
    settings = Settings.load(home=tmp_path)
    with pytest.raises(ConfigError, match="drift.webhook_url is not set"):
        Sender(settings, engine_for(settings))
    assert "alert_delivery" not in jobs.wanted(settings)
    assert "alert_delivery" in jobs.wanted(Settings.load(home=tmp_path, drift={"webhook_url": "https://h.example/x"}))


def test_an_operator_sends_the_waiting_alerts_once_the_receiver_is_fixed(tmp_path, monkeypatch) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    settings = _settings(tmp_path, url)
    _raise(settings, "drifted")
    assert Sender(settings, engine_for(settings)).deliver(now_due=True)["failed"] == 1  # next round in 30 s
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFITD_")} | {
        "REFITD_HOME": str(tmp_path), "REFITD_DRIFT__WEBHOOK_URL": url, "COLUMNS": "200"}
    receiver = Receiver(port=port)
    try:
        sent = subprocess.run([sys.executable, "-m", "refitd.cli", "drift", "alerts", "--send"], env=env,
                              capture_output=True, text=True, timeout=120)
    finally:
        receiver.close()
    assert sent.returncode == 0, sent.stderr
    assert "delivered 1, failed 0, given up 0" in sent.stdout and "delivered" in sent.stdout.split("alerts")[-1]
    assert [b["text"] for b in receiver.received] == ["drifted"]
    assert str(port) not in sent.stdout + sent.stderr  # the URL is not printed
    unset = subprocess.run([sys.executable, "-m", "refitd.cli", "drift", "alerts", "--send"],
                           env={k: v for k, v in env.items() if k != "REFITD_DRIFT__WEBHOOK_URL"},
                           capture_output=True, text=True, timeout=120)
    assert unset.returncode != 0 and "drift.webhook_url is not set" in unset.stdout + unset.stderr
