"""The serving handler: everything the HTTP endpoints do, minus HTTP.

Holds the runtime of the version being served, answers predictions, hands
rows to the prediction log, and swaps in a new champion when the registry
names one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import numpy as np
from sqlalchemy import Engine

from core import registry
from core.artifacts import ArtifactStore
from core.db import session_scope
from core.errors import ModelLoadError, NoChampionError, NotReadyError
from core.settings import Settings
from core.tables import new_prediction_id, utcnow
from serving.predlog import PredictionLog
from serving.runtime import OnnxClassifier

log = logging.getLogger(__name__)


class DataPlane:
    def __init__(self, settings: Settings, engine: Engine, store: ArtifactStore, predlog: PredictionLog) -> None:
        self.settings, self.engine, self.store, self.predlog = settings, engine, store, predlog
        self.runtime: OnnxClassifier | None = None
        self.started = time.time()
        self._swap_lock = threading.Lock()

    # Model lifecycle ------------------------------------------------------------------

    def load_champion(self) -> str | None:
        """Load the registry's champion if it is not the version being served; return what is served."""
        with session_scope(self.engine) as session:
            champion = registry.get_champion(session)
        if champion is None:
            raise NoChampionError()
        if self.runtime is not None and self.runtime.version == champion.version:
            return champion.version
        return self.load_version(champion.version)

    def load_version(self, version: str) -> str:
        """Load ``version`` beside the current one and swap to it; the old one keeps serving on failure."""
        with self._swap_lock:
            folder = self.store.path(version)
            candidate = OnnxClassifier(
                version, folder, provider=self.settings.serving.provider, threads=self.settings.serving.threads
            )
            try:
                candidate.load()
            except ModelLoadError as exc:
                log.error("refused to serve %s: %s", version, exc.reason)
                with session_scope(self.engine) as session:
                    registry.record_event(session, kind="load_refused", subject=version, reason=str(exc))
                raise
            self.runtime = candidate  # one reference assignment: requests see old or new, never half
            log.info("serving %s", version)
            return version

    @property
    def ready(self) -> bool:
        return self.runtime is not None and self.runtime.ready

    # Requests ---------------------------------------------------------------------------

    async def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        runtime = self.runtime
        if runtime is None:
            raise NotReadyError()
        start = time.perf_counter()
        batch = await asyncio.to_thread(runtime.predict, texts)
        latency_ms = (time.perf_counter() - start) * 1000.0
        return self._answer(runtime, texts, batch.labels, batch.scores, batch.embeddings, latency_ms)

    def _answer(
        self, runtime: OnnxClassifier, texts: list[str], labels: list[str], scores: np.ndarray,
        embeddings: np.ndarray, latency_ms: float,
    ) -> list[dict[str, Any]]:
        now = utcnow()
        answers, rows = [], []
        for text, label, row_scores, emb in zip(texts, labels, scores, embeddings, strict=True):
            pid = new_prediction_id()
            class_scores = {lbl: float(s) for lbl, s in zip(runtime.labels, row_scores, strict=True)}
            answers.append({"prediction_id": pid, "label": label, "scores": class_scores, "model_version": runtime.version})
            rows.append({
                "id": pid, "created_at": now, "model_version": runtime.version, "text": text, "label": label,
                "scores": class_scores, "confidence": float(row_scores.max()), "latency_ms": latency_ms,
                "embedding": emb.astype(np.float16).tobytes(),
            })
        self.predlog.add(rows)
        return answers

    def status(self) -> dict[str, Any]:
        with session_scope(self.engine) as session:
            champion = registry.get_champion(session)
        runtime = self.runtime
        return {
            "champion": champion.version if champion else None,
            "serving": runtime.version if runtime else None,
            "ready": self.ready,
            "device": runtime.device if runtime else None,
            "labels": runtime.labels if runtime else [],
            "pending_log_rows": self.predlog.pending,
            "uptime_s": round(time.time() - self.started, 1),
        }
