"""Shadow scoring: the version in shadow answers a sampled share of live requests, off the request path.

The champion answers every request as always. After an answer is logged, :meth:`ShadowScorer.offer`
samples it (``gate.shadow_share``) into a bounded queue and returns at once; one thread, at lower CPU
priority and with one ONNX Runtime thread, scores queued texts in batches with the shadow version and
writes its answers as ``shadow_scores`` rows (joined to the champion's by prediction id). When it falls
behind, new samples are dropped and counted, never queued without bound; a shadow that fails to score
loses only its own rows. The daemon's shadow watch reads the rows and decides (daemon/shadow.py).
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections import deque

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from refitd.core.db import session_scope
from refitd.core.shadow import record_scores
from refitd.core.tables import utcnow
from refitd.serving.runtime import OnnxClassifier

log = logging.getLogger(__name__)

MAX_QUEUED_TEXTS = 2048
BATCH_TEXTS = 32
NICE = 10


class ShadowScorer:
    def __init__(self, runtime: OnnxClassifier, engine: Engine, *, share: float, max_queued: int = MAX_QUEUED_TEXTS,
                 seed: int | None = None) -> None:
        self.runtime, self.engine, self.share, self.max_queued = runtime, engine, share, max_queued
        self.scored = self.dropped = self.failed = self.queued = 0
        self._queue: deque[tuple[str, str]] = deque()  # (prediction id, text)
        self._cond = threading.Condition()
        self._stopping = False
        self._rng = random.Random(seed)
        self._thread = threading.Thread(target=self._run, name=f"shadow-{runtime.version}", daemon=True)

    @property
    def version(self) -> str:
        return self.runtime.version

    def start(self) -> None:
        self._thread.start()

    def offer(self, ids: list[str], texts: list[str]) -> None:
        """Sample one answered request into the queue (never blocks, never raises on a full queue)."""
        if self._rng.random() >= self.share:
            return
        with self._cond:
            if self.queued + len(texts) > self.max_queued:
                self.dropped += len(texts)
                return
            self._queue.extend(zip(ids, texts, strict=True))
            self.queued += len(texts)
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():  # else the thread unloads its runtime itself when its batch ends
            self.runtime.unload()

    def status(self) -> dict[str, int | str]:
        return {"version": self.version, "scored": self.scored, "dropped": self.dropped, "failed": self.failed,
                "queued": self.queued}

    def _run(self) -> None:
        try:  # Linux: a thread is a task, and its niceness is its own; serving's threads keep theirs
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        except (OSError, AttributeError):
            log.debug("could not lower the shadow thread's priority")
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    break
                batch = [self._queue.popleft() for _ in range(min(BATCH_TEXTS, len(self._queue)))]
                self.queued -= len(batch)
            try:
                self._score(batch)
            except Exception:  # noqa: BLE001 - one bad batch loses its own rows; the scorer goes on
                log.exception("shadow %s: scoring a batch of %d failed", self.version, len(batch))
                self.failed += len(batch)
        if self._stopping:
            self.runtime.unload()  # idempotent: stop() may have unloaded it already

    def _score(self, batch: list[tuple[str, str]]) -> None:
        try:
            out = self.runtime.predict([text for _, text in batch])
        except Exception:  # noqa: BLE001 - a shadow that cannot score loses its own rows, never a request
            log.exception("shadow %s failed to score %d texts", self.version, len(batch))
            self.failed += len(batch)
            return
        now = utcnow()
        rows = [{"version": self.version, "prediction_id": pid, "label": label, "confidence": float(scores.max()),
                 "created_at": now} for (pid, _), label, scores in zip(batch, out.labels, out.scores, strict=True)]
        try:
            with session_scope(self.engine) as session:
                record_scores(session, rows)
        except SQLAlchemyError as exc:
            log.warning("could not record %d shadow scores of %s: %s", len(rows), self.version, exc)
            self.failed += len(rows)
            return
        self.scored += len(rows)
