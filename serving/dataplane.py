"""The serving handler: everything the HTTP endpoints do, minus HTTP.

Holds the runtime of the version being served, answers predictions through
the batcher, hands rows to the prediction log, records feedback, and swaps
in a new champion when the registry names one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import select

from refitd.core import registry
from refitd.core.artifacts import ArtifactStore
from refitd.core.db import db_now, session_scope
from refitd.core.errors import ModelLoadError, NoChampionError, NotFoundError, NotReadyError, RefitdError, UnprocessableError
from refitd.core.labels import kept_source
from refitd.core.settings import Settings
from refitd.core.tables import Feedback, Prediction
from refitd.serving.batcher import Answer, Batcher
from refitd.serving.limits import text_problem
from refitd.serving.metrics import ServingMetrics
from refitd.serving.predlog import PredictionLog, log_rows
from refitd.serving.runtime import OnnxClassifier
from refitd.serving.shadow import ShadowScorer

log = logging.getLogger(__name__)


class StoreUnavailable(RefitdError):
    status_code = 503

    def __init__(self) -> None:
        super().__init__("the database is unavailable; feedback was not recorded, retry shortly")


class DataPlane:
    def __init__(self, settings: Settings, engine: Engine, store: ArtifactStore, predlog: PredictionLog) -> None:
        self.settings, self.engine, self.store, self.predlog = settings, engine, store, predlog
        self.metrics = ServingMetrics()
        self.runtime: OnnxClassifier | None = None
        self.shadow: ShadowScorer | None = None
        self.started = time.time()
        self.refused: dict[str, str] = {}  # version → why it was refused (not retried until asked)
        # version → why it could not load for shadow scoring; kept apart, so that a failed shadow load never
        # stops this server from loading the version as champion
        self.shadow_refused: dict[str, str] = {}
        self._rng = random.Random()
        self._swap_lock = threading.Lock()
        s = settings.serving
        self.batcher = Batcher(lambda: self.runtime, max_batch_size=s.max_batch_size, max_wait_ms=s.max_wait_ms,
                               queue_size=s.queue_size, timeout_s=s.request_timeout_s, max_padding=s.max_padding,
                               on_batch=self._on_batch)

    # model lifecycle ------------------------------------------------------------------

    def champion_version(self) -> str:
        with session_scope(self.engine) as session:
            champion = registry.get_champion(session)
        if champion is None:
            raise NoChampionError()
        return champion.version

    def load_champion(self, *, retry_refused: bool = False) -> str | None:
        """Serve the registry's champion if it is not served yet; returns the version served.

        The champion is read, compared and loaded under one lock: a rollback that lands while another
        version loads waits for it, then reads the registry again and swaps back, so what it answers is
        what serves (read outside the lock, it would see the old champion still serving, answer that, and
        the other load would then swap in the version it rolled back from)."""
        with self._swap_lock:
            version = self.champion_version()
            if self.runtime is not None and self.runtime.version == version:
                return version
            if version in self.refused and not retry_refused:
                return self.runtime.version if self.runtime else None
            return self._load(version)

    def _load(self, version: str) -> str:
        """Verify ``version``'s files against their manifest, load it beside the current one, smoke-query it,
        then swap; on failure keep serving the old one. A version whose files or graph are wrong is refused
        (not retried until a reload asks); a file that cannot be read now (permissions, I/O) is retried at
        the next poll."""
        try:
            candidate = OnnxClassifier(version, self.store.verify(version),
                                       provider=self.settings.serving.provider, threads=self.settings.serving.threads,
                                       precision=self.settings.serving.precision, spin=self.settings.serving.spin)
            candidate.load()
        except RefitdError as exc:
            self._refuse(version, str(exc))
            raise ModelLoadError(version, str(exc)) from exc
        except OSError as exc:
            log.error("cannot read %s's files (%s: %s); retrying at the next registry poll",
                      version, type(exc).__name__, exc)
            raise ModelLoadError(version, f"cannot read its files ({exc}); retrying at the next poll") from exc
        previous = self.runtime
        self.runtime = candidate  # one reference assignment: a batch runs wholly on old or new
        self.refused.pop(version, None)
        self.metrics.serving(version)
        if previous is not None:
            self.metrics.swaps.inc()
            self._event("swapped", version, f"now serving {version} (was {previous.version})")
        log.info("serving %s", version)
        return version

    def load_shadow(self) -> str | None:
        """Score in shadow the version the registry has in shadow (one ONNX Runtime thread, beside the champion);
        stop a shadow that is no longer in shadow. Returns the version in shadow here."""
        with session_scope(self.engine) as session:
            row = registry.get_shadow(session)
        wanted = row.version if row is not None else None
        current = self.shadow
        if current is not None and current.version == wanted:
            return wanted
        if current is not None:
            self.shadow = None
            current.stop()
            log.info("stopped shadow scoring of %s (%s scored, %s dropped)", current.version, current.scored,
                     current.dropped)
        if wanted is None or wanted in self.refused or wanted in self.shadow_refused:
            return None
        try:
            runtime = OnnxClassifier(wanted, self.store.verify(wanted), provider=self.settings.serving.provider,
                                     threads=1, precision=self.settings.serving.precision)
            runtime.load()
        except Exception as exc:  # noqa: BLE001 - a shadow that cannot load is refused; serving goes on
            self.shadow_refused[wanted] = str(exc)
            self._event("shadow_load_refused", wanted, f"could not load {wanted} for shadow scoring: {exc}")
            return None
        scorer = ShadowScorer(runtime, self.engine, share=self.settings.gate.shadow_share)
        scorer.start()
        self.shadow = scorer
        log.info("scoring %s in shadow on %.0f%% of requests", wanted, 100 * scorer.share)
        return wanted

    def stop_shadow(self) -> None:
        scorer, self.shadow = self.shadow, None
        if scorer is not None:
            scorer.stop()

    def _refuse(self, version: str, reason: str) -> None:
        log.error("refused to serve %s: %s", version, reason)
        self.refused[version] = reason
        self.metrics.refused.inc()
        self._event("load_refused", version, f"refused {version}; still serving "
                    f"{self.runtime.version if self.runtime else 'nothing'}: {reason}")

    def _event(self, kind: str, subject: str, reason: str, actor: str = "serving") -> None:
        try:
            with session_scope(self.engine) as session:
                registry.record_event(session, kind=kind, subject=subject, reason=reason, actor=actor)
        except SQLAlchemyError:
            log.warning("could not record %s event for %s (database unavailable)", kind, subject)

    async def watch_registry(self, stop: asyncio.Event) -> None:
        """Poll the registry and swap to a new champion in the background."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.settings.serving.poll_interval_s)
                return
            except TimeoutError:
                pass
            try:
                await asyncio.to_thread(self.load_champion)
            except (RefitdError, SQLAlchemyError) as exc:
                log.debug("registry poll: %s", exc)
            except Exception:  # noqa: BLE001 - the poll is how promotions arrive: it must outlive any one failure
                log.exception("registry poll failed; polling again in %g s", self.settings.serving.poll_interval_s)
            try:
                await asyncio.to_thread(self.load_shadow)
            except SQLAlchemyError as exc:
                log.debug("registry poll (shadow): %s", exc)
            except Exception:  # noqa: BLE001 - shadow scoring is optional; the champion poll must go on
                log.exception("shadow scoring could not start; the registry poll goes on")

    @property
    def ready(self) -> bool:
        return self.runtime is not None and self.runtime.ready

    # requests -------------------------------------------------------------------------

    async def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        return (await self.predict_answer(texts))[1]

    async def predict_answer(self, texts: list[str]) -> tuple[Answer, list[dict[str, Any]]]:
        """The batch's arrays (for tensor protocols) and the logged per-text answers."""
        answer = await self.batcher.submit(texts)
        return answer, self._log(texts, answer)

    def _log(self, texts: list[str], answer: Answer) -> list[dict[str, Any]]:
        rows = log_rows(texts, answer, embedding_share=self.settings.serving.log_embedding_share, rng=self._rng)
        labels = answer.runtime.labels
        out = [{"prediction_id": row["id"], "label": row["label"], "model_version": row["model_version"],
                "scores": {lbl: float(s) for lbl, s in zip(labels, row_scores, strict=True)}}
               for row, row_scores in zip(rows, answer.scores, strict=True)]
        for label in answer.labels:
            self.metrics.predicted(label)
        self.predlog.add(rows)  # durable before the caller is answered
        shadow = self.shadow
        if shadow is not None:  # after the answer is safe; O(1), never blocks the request
            shadow.offer([row["id"] for row in rows], texts)
        return out

    def feedback(self, *, label: str, prediction_id: str | None, text: str | None, source: str) -> dict[str, Any]:
        """Record a ground-truth label; the same label twice is a no-op, a new label replaces the old."""
        labels = self.runtime.labels if self.runtime else []
        if labels and label not in labels:
            raise UnprocessableError(f"unknown label {label!r}; expected one of {', '.join(labels)}")
        if prediction_id is not None and text_problem(prediction_id) is not None:
            raise NotFoundError("prediction", prediction_id)  # no id has a NUL (PostgreSQL would refuse to look)
        try:
            coming = prediction_id is not None and not self._prediction_exists(prediction_id) \
                and self.predlog.may_hold(prediction_id)
            if coming:
                # Flush only when the row may still be on its way (it lands before its label); an id the log
                # never held answers 404 at once (from the label's write), never waiting behind a flush.
                self.predlog.flush()
            try:
                return self._upsert_feedback(label=label, prediction_id=prediction_id, text=text, source=source)
            except NotFoundError:
                if coming and self.predlog.spooled_segments:
                    # the flush could not land it (the database takes reads, not writes): it waits in a spooled
                    # segment, not unknown, and a 404 would tell the client to drop the label
                    raise StoreUnavailable() from None
                raise
        except SQLAlchemyError as exc:
            raise StoreUnavailable() from exc

    def _prediction_exists(self, prediction_id: str) -> bool:
        with session_scope(self.engine) as session:
            return session.get(Prediction, prediction_id) is not None

    def _upsert_feedback(self, *, label: str, prediction_id: str | None, text: str | None, source: str) -> dict[str, Any]:
        for _ in range(2):
            try:
                with session_scope(self.engine) as session:
                    row = None
                    if prediction_id is not None:
                        # In the label's own transaction, with the prediction's row locked against retention's
                        # delete (PostgreSQL; SQLite's writers take turns): a label is never written for a
                        # prediction deleted meanwhile, where no refit could read its text.
                        locked = select(Prediction.id).where(Prediction.id == prediction_id) \
                            .with_for_update(read=True, key_share=True)
                        if session.exec(locked).first() is None:
                            raise NotFoundError("prediction", prediction_id)
                        row = session.exec(select(Feedback).where(Feedback.prediction_id == prediction_id)
                                           .with_for_update()).one_or_none()  # one writer at a time decides
                    measures = self.settings.serving.feedback_measure_sources
                    kept = kept_source(row.source if row is not None else None, source, measures)
                    corrects = measures is not None and source not in measures
                    if row is not None and row.label == label:
                        if measures is not None and row.source not in measures and kept in measures:
                            row.source = kept  # an audit confirms a correction: the answer is measured now
                            session.add(row)
                        return {"feedback_id": row.id, "status": "unchanged"}
                    status = "replaced" if row is not None else "recorded"
                    row = row or Feedback(prediction_id=prediction_id, text=text, label=label, source=source)
                    # the database's clock: every host's labels are counted against one
                    row.label, row.source, row.created_at = label, kept, db_now(session)
                    if corrects and row.corrected_at is None:  # kept for good: it may train a model from now on
                        row.corrected_at = row.created_at
                    session.add(row)
                    session.flush()
                    return {"feedback_id": row.id, "status": status}
            except IntegrityError:
                continue  # a concurrent duplicate won the insert; read it back
        raise StoreUnavailable()

    def _on_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.batch_seconds.observe(seconds)

    def status(self) -> dict[str, Any]:
        try:
            champion: str | None = self.champion_version()
        except (RefitdError, SQLAlchemyError):
            champion = None
        runtime, shadow = self.runtime, self.shadow  # the watcher may swap either meanwhile
        return {
            "champion": champion,
            "serving": runtime.version if runtime else None,
            "ready": self.ready,
            "device": runtime.device if runtime else None,
            "labels": runtime.labels if runtime else [],
            "queue_depth": self.batcher.queued_texts,
            "refused": dict(self.refused), "shadow_refused": dict(self.shadow_refused),
            "shadow": shadow.status() if shadow is not None else None,
            "prediction_log": {"pending": self.predlog.pending, "spooled_segments": self.predlog.spooled_segments,
                               "database_ok": self.predlog.db_ok, "rejected_rows": self.predlog.rejected},
            "uptime_s": round(time.time() - self.started, 1),
        }

    def require_ready(self) -> OnnxClassifier:
        if self.runtime is None:
            raise NotReadyError()
        return self.runtime
