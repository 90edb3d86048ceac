"""A production stream replayed through the HTTP API at a steady rate, with true labels posted late.

Each answer is kept (time, phase, served version, predicted and true label, whether its
label was posted) so the demo can score live accuracy per phase and per served version.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


@dataclass
class Answer:
    at: float  # seconds since the stream started
    phase: int
    topic: str
    version: str
    predicted: str
    truth: str
    labelled: bool


@dataclass
class Replay:
    """Sends texts at ``rate`` per second from ``workers`` threads; posts the labels of a fraction after ``delay_s``."""

    url: str
    rate: float
    label_fraction: float
    delay_s: float
    seed: int = 0
    workers: int = 4
    answers: list[Answer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    labels_posted: int = 0
    sent: int = 0

    def __post_init__(self) -> None:
        self.t0 = time.monotonic()
        self._rng = np.random.default_rng(self.seed)
        self._due: list[tuple[float, str, str]] = []  # (when, prediction id, label)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._client = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=self.workers + 2))
        self._feeder = threading.Thread(target=self._post_labels, name="demo-feedback", daemon=True)
        self._feeder.start()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def play(self, rows: pd.DataFrame, phase: int, *, until=None) -> int:  # type: ignore[no-untyped-def]
        """Send ``rows`` (text, label, topic) in order at the steady rate; stop early when ``until()`` is true."""
        sent = 0
        check_every = max(1, int(self.rate))  # ``until`` about once a second, not before every request
        with ThreadPoolExecutor(self.workers) as pool:
            next_at = time.monotonic()
            for row in rows.itertuples(index=False):
                if self._stop.is_set() or (until is not None and sent % check_every == 0 and until()):
                    break
                next_at += 1.0 / self.rate
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                pool.submit(self._one, row.text, row.label, row.topic, phase)
                sent += 1
        return sent

    def _one(self, text: str, truth: str, topic: str, phase: int) -> None:
        try:
            r = self._client.post(f"{self.url}/v1/predict", json={"text": text})
            r.raise_for_status()
        except httpx.HTTPError as exc:
            with self._lock:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            return
        p = r.json()["predictions"][0]
        labelled = bool(self._rng.random() < self.label_fraction)
        with self._lock:
            self.sent += 1
            self.answers.append(Answer(self.now(), phase, topic, p["model_version"], p["label"], truth, labelled))
            if labelled:
                heapq.heappush(self._due, (time.monotonic() + self.delay_s, p["prediction_id"], truth))

    def _post_labels(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                ready = []
                while self._due and self._due[0][0] <= time.monotonic():
                    ready.append(heapq.heappop(self._due))
            for _, prediction_id, label in ready:
                try:
                    self._client.post(f"{self.url}/v1/feedback", json={"prediction_id": prediction_id, "label": label})
                    self.labels_posted += 1
                except httpx.HTTPError as exc:
                    log.warning("feedback not posted: %s", exc)
            self._stop.wait(0.2)

    def close(self) -> None:
        self._stop.set()
        self._feeder.join(5)
        self._client.close()

    def frame(self) -> pd.DataFrame:
        with self._lock:
            return pd.DataFrame([a.__dict__ for a in self.answers])
