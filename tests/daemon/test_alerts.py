"""The alert outbox against real local receivers: an alert is stored with what it reports and delivered once the
receiver answers, in the order raised; a receiver that stays down only costs events and, past
drift.webhook_give_up_hours, the alert; two senders never send one alert at once; and the URL (a secret: a Slack
webhook URL is its own key) never reaches a log, an event or `refitd status`."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from rich.console import Console
from sqlmodel import select

from refitd.core import alerts
from refitd.core.db import engine_for, session_scope, upgrade
from refitd.core.settings import Settings
from refitd.core.tables import Alert, Event, utcnow
from refitd.daemon import alerts as delivery
from refitd.daemon import jobs
from refitd.daemon.alerts import Sender
from refitd.daemon.status import gather_status, render_status
from tests.conftest import free_port


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
    monkeypatch.setattr(delivery, "FIRST_RETRY_S", 0.5)
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
        time.sleep(0.6)
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
    assert first.status == "given_up" and first.attempts == 4 and first.last_error == "HTTP 503"
    assert second.status == "pending" and second.attempts == 2  # tried once the first was given up
    (failed,) = _events(settings, "alert_failed")
    assert failed.subject == str(first.id) and "given up after 4 tries" in failed.reason and "HTTP 503" in failed.reason
    assert failed.data["alert"]["text"] == "first"  # what the page said is kept with the event
    assert alerts.prune(engine, utcnow()) == 1
    assert [a.status for a in _outbox(settings)] == ["pending"]  # a pending alert is never pruned


def test_two_senders_never_hold_one_alert_at_once(tmp_path, db_url) -> None:
    settings = _settings(tmp_path, f"http://127.0.0.1:{free_port()}/hook", db_url)
    engine = engine_for(settings)
    _raise(settings, "only one")
    mine = alerts.claim_head(engine, holder="host-a:1", hold_s=0.5)
    assert mine is not None and mine.claimed_by == "host-a:1"
    assert alerts.claim_head(engine, holder="host-b:2", hold_s=30) is None  # held: the other sender waits
    time.sleep(0.6)
    theirs = alerts.claim_head(engine, holder="host-b:2", hold_s=30)  # host-a died mid-delivery: its claim lapsed
    assert theirs is not None and theirs.id == mine.id and theirs.claimed_by == "host-b:2"
    assert not alerts.mark_delivered(engine, mine, holder="host-a:1", tries=1, shown="x")  # a lost claim writes nothing
    assert alerts.mark_delivered(engine, theirs, holder="host-b:2", tries=1, shown="x")
    assert alerts.claim_head(engine, holder="host-a:1", hold_s=30, now_due=True) is None


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
    with pytest.raises(ValueError, match="drift.webhook_url is not set"):
        Sender(settings, engine_for(settings))
    assert "alert_delivery" not in jobs.wanted(settings)
    assert "alert_delivery" in jobs.wanted(Settings.load(home=tmp_path, drift={"webhook_url": "https://h.example/x"}))
