"""Alerts: a JSON POST (Slack-compatible ``text``) when the drift verdict changes.

Sent from a background thread with a timeout and retries, so a slow or dead
receiver never blocks or fails a check; a delivery that gives up is an event.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import httpx
from pydantic import SecretStr
from sqlalchemy import Engine

from refitd.core import registry
from refitd.core.credentials import redact_url
from refitd.core.db import session_scope

log = logging.getLogger(__name__)


class Webhook:
    """One receiver. Its URL is a secret (a Slack webhook URL is its own key): logs and events show
    only its scheme and host."""

    def __init__(self, url: SecretStr, engine: Engine, *, timeout_s: float = 5.0, retries: int = 3) -> None:
        self.url, self.engine, self.timeout_s, self.retries = url, engine, timeout_s, retries
        self.shown = redact_url(url)

    def send(self, payload: dict[str, Any]) -> threading.Thread:
        """Deliver in the background; return the thread (joinable in tests and at shutdown)."""
        thread = threading.Thread(target=self._deliver, args=(payload,), name="webhook", daemon=True)
        thread.start()
        return thread

    def _deliver(self, payload: dict[str, Any]) -> None:
        error, url = "", self.url.get_secret_value()
        for attempt in range(1, self.retries + 1):
            try:
                response = httpx.post(url, json=payload, timeout=self.timeout_s)
                if response.status_code < 300:
                    return
                error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {str(exc).replace(url, self.shown)}"
            time.sleep(min(2 ** (attempt - 1) * 0.5, 5.0))
        log.warning("alert to %s failed after %d tries: %s", self.shown, self.retries, error)
        try:
            with session_scope(self.engine) as session:
                registry.record_event(session, kind="alert_failed", subject=str(payload.get("check_id")),
                                      reason=f"webhook {self.shown} failed after {self.retries} tries: {error}")
        except Exception:  # noqa: BLE001 - an alert must never take anything down with it
            log.exception("could not record the failed alert")


def drift_payload(check: Any, previous: str | None) -> dict[str, Any]:
    icon = ":rotating_light:" if check.verdict == "drifted" else ":white_check_mark:"
    return {
        "text": f"{icon} refitd drift check {check.id} on {check.model_version}: {previous or 'none'} → "
                f"{check.verdict}. {check.reason}",
        "check_id": check.id, "verdict": check.verdict, "previous": previous, "model_version": check.model_version,
        "reason": check.reason, "report_path": check.report_path,
        "signals": {k: v for k, v in check.signals.items() if not k.startswith("_")},
    }
