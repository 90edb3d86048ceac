"""Webhook alerts reach a real local receiver; a dead or failing receiver only becomes an event, and the
URL (a secret: a Slack webhook URL is its own key) never reaches a log, an event or `refitd status`."""

from __future__ import annotations

import io
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pydantic import SecretStr
from rich.console import Console
from sqlmodel import select

from refitd.core.db import engine_for, make_engine, session_scope, upgrade
from refitd.core.settings import Settings
from refitd.core.tables import Event
from refitd.daemon.drift.alerts import Webhook
from refitd.daemon.status import gather_status, render_status
from tests.conftest import free_port


class Receiver:
    """A real HTTP server on a free loopback port that keeps what it is sent."""

    def __init__(self, status: int = 200, path: str = "/hook") -> None:
        self.received: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_alert_delivered_to_a_real_receiver(sqlite_url) -> None:
    receiver = Receiver()
    try:
        Webhook(SecretStr(receiver.url), make_engine(sqlite_url), timeout_s=2).send({"text": "drifted", "check_id": 1}).join(10)
        assert receiver.received == [{"text": "drifted", "check_id": 1}]
    finally:
        receiver.close()


def test_dead_receiver_is_an_event_not_a_crash(sqlite_url) -> None:
    engine = make_engine(sqlite_url)
    upgrade(engine)
    dead = f"http://127.0.0.1:{free_port()}/hook"
    thread = Webhook(SecretStr(dead), engine, timeout_s=0.5, retries=2).send({"text": "x", "check_id": 7})
    thread.join(15)
    assert not thread.is_alive()
    with session_scope(engine) as s:
        events = s.exec(select(Event).where(Event.kind == "alert_failed")).all()
    assert len(events) == 1 and events[0].subject == "7" and "after 2 tries" in events[0].reason


def test_a_failing_webhook_never_shows_its_url(tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.WARNING, logger="httpx")  # as configure_logging keeps it: its INFO line has the URL
    receiver = Receiver(status=500, path="/services/T000/B000/XXXXs3cretXXXX")
    try:
        settings = Settings.load(home=tmp_path, serving={"port": free_port()}, drift={"webhook_url": receiver.url})
        engine = engine_for(settings)
        upgrade(engine)
        d = settings.drift
        thread = Webhook(d.webhook_url, engine, timeout_s=2, retries=2).send({"text": "drifted", "check_id": 3})
        thread.join(15)
        assert not thread.is_alive() and len(receiver.received) == 2  # it was really sent, and failed twice
    finally:
        receiver.close()
    with session_scope(engine) as s:
        (event,) = s.exec(select(Event).where(Event.kind == "alert_failed")).all()
    host = receiver.url.split("/services")[0]
    assert event.reason == f"webhook {host}/… failed after 2 tries: HTTP 500"
    assert "failed after 2 tries" in caplog.text and f"{host}/…" in caplog.text
    info = gather_status(settings)
    screen = io.StringIO()
    render_status(info, Console(file=screen, width=300))
    assert event.reason in screen.getvalue()
    for shown in (caplog.text, event.reason, json.dumps(info, default=str), screen.getvalue()):
        assert "s3cret" not in shown and "/services/" not in shown
