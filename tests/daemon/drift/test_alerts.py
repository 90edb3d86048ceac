"""Webhook alerts reach a real local receiver; a dead receiver only becomes an event."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sqlmodel import select

from refitd.core.db import make_engine, session_scope, upgrade
from refitd.core.tables import Event
from refitd.daemon.drift.alerts import Webhook
from tests.conftest import free_port


class Receiver:
    """A real HTTP server on a free loopback port that keeps what it is sent."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_alert_delivered_to_a_real_receiver(sqlite_url) -> None:
    receiver = Receiver()
    try:
        Webhook(receiver.url, make_engine(sqlite_url), timeout_s=2).send({"text": "drifted", "check_id": 1}).join(10)
        assert receiver.received == [{"text": "drifted", "check_id": 1}]
    finally:
        receiver.close()


def test_dead_receiver_is_an_event_not_a_crash(sqlite_url) -> None:
    engine = make_engine(sqlite_url)
    upgrade(engine)
    dead = f"http://127.0.0.1:{free_port()}/hook"
    thread = Webhook(dead, engine, timeout_s=0.5, retries=2).send({"text": "x", "check_id": 7})
    thread.join(15)
    assert not thread.is_alive()
    with session_scope(engine) as s:
        events = s.exec(select(Event).where(Event.kind == "alert_failed")).all()
    assert len(events) == 1 and events[0].subject == "7" and "after 2 tries" in events[0].reason
