"""Webhook delivery from the alert outbox (``core/alerts``): a JSON POST, Slack-compatible ``text``.

Each round tries ``drift.webhook_retries`` times with a short backoff; a failed round leaves the alert in the
outbox for the next one (30 s, doubling to 15 min) until ``drift.webhook_give_up_hours``. Alerts go out oldest
first and a failed one holds back the newer ones, so a receiver never sees "recovered" before "drifted". The
check's process sends at once (``send_soon``); the daemon's ``alert_delivery`` job sends what is left. A slow or
dead receiver never blocks or fails a check; the receiver's URL (a secret: a Slack webhook URL is its own key)
never reaches a log, an event or ``refitd status`` — only its scheme and host do.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import Engine

from refitd.core import alerts as outbox
from refitd.core.credentials import redact_url
from refitd.core.errors import ConfigError
from refitd.core.leases import holder_name
from refitd.core.settings import Settings
from refitd.core.tables import Alert

log = logging.getLogger(__name__)

THREAD_NAME = "webhook"
FIRST_RETRY_S, LAST_RETRY_S = 30.0, 900.0  # between rounds: 30 s, doubling, at most 15 min
LATE_S = 60.0  # an alert delivered later than this after it was raised says so in its text


class Sender:
    """Delivers the outbox to ``drift.webhook_url``."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        d = settings.drift
        if d.webhook_url is None:
            raise ConfigError("drift.webhook_url is not set: there is nowhere to send alerts")
        self.url, self.engine = d.webhook_url.get_secret_value(), engine
        self.timeout_s, self.tries = d.webhook_timeout_s, d.webhook_retries
        self.give_up_after = timedelta(hours=d.webhook_give_up_hours)
        self.shown = redact_url(d.webhook_url)
        self.holder = f"{holder_name()}:{uuid.uuid4().hex[:8]}"  # each sender its own, even on one thread
        # A claim outlasts a whole round (every try timing out, the backoffs between them) with room to spare; a
        # round ends before its claim does (``_post``), so no other sender takes the alert while this one sends.
        self.hold_s = self.tries * (self.timeout_s + 5.0) + 30.0

    def send_soon(self) -> threading.Thread:
        """Deliver what is waiting on a background thread, trying the oldest alert now even if its next round is
        not due (a new alert just came); return the thread (joined by a check's process before it exits)."""
        thread = threading.Thread(target=self._quietly, name=THREAD_NAME, daemon=True)
        thread.start()
        return thread

    def _quietly(self) -> None:
        try:
            self.deliver(now_due=True)
        except Exception:  # noqa: BLE001 - the alert stays in the outbox; the daemon's job sends it later
            log.exception("alert delivery failed; the outbox keeps the alert")

    def deliver(self, *, now_due: bool = False, limit: int = 100) -> dict[str, int]:
        """Send waiting alerts oldest first until one fails, none is due, or ``limit``; return the counts."""
        # Never sent that late: what expires during this pass is given up by claim_head when it reaches the head.
        counts = {"delivered": 0, "failed": 0, "given_up": outbox.give_up_expired(self.engine, self.give_up_after)}
        for _ in range(limit):
            alert = outbox.claim_head(self.engine, holder=self.holder, hold_s=self.hold_s,
                                      give_up_after=self.give_up_after, now_due=now_due and not counts["delivered"])
            if alert is None:
                break
            tries, error, permanent = self._post(alert)
            if error is None:
                outbox.mark_delivered(self.engine, alert, holder=self.holder, tries=tries, shown=self.shown)
                counts["delivered"] += 1
                continue
            rounds = (alert.attempts + tries) // self.tries
            retry_s = min(FIRST_RETRY_S * 2 ** min(max(rounds - 1, 0), 10), LAST_RETRY_S)
            status = outbox.mark_failed(self.engine, alert, holder=self.holder, tries=tries, error=error,
                                        shown=self.shown, retry_s=retry_s, give_up_after=self.give_up_after,
                                        permanent=permanent)
            log.warning("alert %s to %s failed after %d tries: %s; %s", alert.id, self.shown, tries, error,
                        {outbox.GIVEN_UP: "given up", None: "its claim lapsed meanwhile"}.get(
                            status, f"next round in {retry_s:g} s"))
            if status != outbox.GIVEN_UP:
                counts["failed"] += 1
                break  # the newer alerts wait behind it: their order is kept
            counts["given_up"] += 1
        return counts

    def _post(self, alert: Alert) -> tuple[int, str | None, bool]:
        """One round of tries: how many were made, the last error (None: delivered) and whether the receiver
        refused the alert for good (a 4xx other than 408 and 429: retrying would get the same answer). The round
        ends early rather than outlast the claim, so no other sender can take the alert while this one sends."""
        body, error = self._body(alert), ""
        headers = {"Idempotency-Key": f"refitd-alert-{alert.id}"}
        ends = time.monotonic() + self.hold_s - 3 * self.timeout_s - 10.0  # a try: connect, write, read
        for attempt in range(1, self.tries + 1):
            try:
                response = httpx.post(self.url, json=body, headers=headers, timeout=self.timeout_s)
                if response.status_code < 300:
                    return attempt, None, False
                error = f"HTTP {response.status_code}"
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    return attempt, error, True
            except Exception as exc:  # noqa: BLE001 - any failure is a failed try, never an alert stuck for good
                error = f"{type(exc).__name__}: {str(exc).replace(self.url, self.shown)}"
            if attempt < self.tries:
                time.sleep(min(2 ** (attempt - 1) * 0.5, 5.0))
                if time.monotonic() > ends:
                    return attempt, f"{error} (the round ran out of time)", False
        return self.tries, error, False

    def _body(self, alert: Alert) -> dict[str, Any]:
        """The stored payload, with the alert's id and when it was raised; a late delivery says so in its text.
        Late by the database's clock, which set both times (the claim's start and the raising), not this host's."""
        body = dict(alert.payload) | {"alert_id": alert.id, "raised_at": alert.created_at.isoformat()}
        claimed_at = alert.claimed_until - timedelta(seconds=self.hold_s) if alert.claimed_until else alert.created_at
        if (claimed_at - alert.created_at).total_seconds() > LATE_S and "text" in body:
            body["text"] = f"{body['text']} (raised {alert.created_at:%Y-%m-%d %H:%M:%S} UTC; delivered late)"
        return body


def wait_for_senders(settings: Settings) -> None:
    """Let this process's deliveries finish (or give up) before it exits: what is cut short stays in the outbox
    for the daemon's job, but a short-lived process (a check's child, ``refitd drift check``) sends it sooner."""
    d = settings.drift
    for thread in threading.enumerate():
        if thread.name == THREAD_NAME:
            thread.join(d.webhook_retries * (d.webhook_timeout_s + 5.0))
