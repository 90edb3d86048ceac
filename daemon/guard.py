"""The post-promotion watch: roll a new champion back when its live quality falls below its predecessor's.

For ``scheduler.watch_minutes`` after a promotion, the new champion's measured accuracy on
the feedback labels of the predictions it served is compared with the previous champion's
on as many of its last labelled predictions (recent traffic, not last month's). Answers are told apart by the
version that gave them, not by comparing a serving host's clock with the database's (a version promoted again
counts its answers from its earlier reign's end or ``CLOCK_TOLERANCE`` before this promotion, whichever is
later). Once both have ``scheduler.watch_min_labels`` labels, a drop of ``scheduler.rollback_drop`` or more rolls
back, records why and alerts; a watch that ends without one records that it passed. The
label-free accuracy estimate of both is reported beside them: the share of each version's answers
whose calibrated confidence is above the ATC threshold its refit stored, or their mean confidence for a
version that has no threshold stored. (The drift check sets the threshold again on the champion's labelled
answers before its window once it has enough; here, where the labels themselves are compared, the stored one
is kept: two versions are read by one rule each, counted in the database.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, case, func, select
from sqlmodel import Session, col

from refitd.core import alerts, registry
from refitd.core.errors import ChampionChangedError
from refitd.core.db import db_now, session_scope
from refitd.core.labels import labelled_accuracy
from refitd.core.settings import Settings
from refitd.core.tables import Event, ModelVersion, Prediction

log = logging.getLogger(__name__)

PREVIOUS_LABELS = 500  # at most this many of the previous champion's last labelled predictions
# How far a serving host's clock may lag the database's and its answers still count for a version promoted again
CLOCK_TOLERANCE = timedelta(minutes=5)


@dataclass
class Quality:
    version: str
    labelled: int
    accuracy: float | None
    estimate: float | None  # label-free accuracy estimate over everything it served in the period
    estimate_method: str = "mean confidence"

    def words(self) -> str:
        acc = "n/a" if self.accuracy is None else f"{self.accuracy:.3f}"
        est = "n/a" if self.estimate is None else f"{self.estimate:.3f}"
        # each estimate names its method: a version without a stored ATC threshold is read by mean confidence,
        # which is not on the same scale as another's ATC share
        return f"{self.version}: accuracy {acc} on {self.labelled} labels, estimate {est} ({self.estimate_method})"


def _quality(session: Session, version: str, *, sources: list[str] | None, after: datetime | None = None,
             latest: int | None = None) -> Quality:
    labelled, acc = labelled_accuracy(session, model_version=version, after=after, latest=latest, sources=sources)
    mv = session.scalars(select(ModelVersion).where(ModelVersion.version == version)).first()
    threshold = None if mv is None else registry.atc_threshold(mv)
    if threshold is None:
        served, method = select(func.avg(Prediction.confidence)), "mean confidence"
    else:  # the share above the threshold, counted by the database
        served = select(func.avg(case((col(Prediction.confidence) > threshold, 1.0), else_=0.0)))
        method = registry.estimate_method(mv)
    served = served.where(Prediction.model_version == version)
    if after is not None:
        served = served.where(col(Prediction.created_at) >= after)
    estimate = session.execute(served).scalar()
    return Quality(version, labelled, acc, None if estimate is None else float(estimate), method)


def _watched_promotion(session: Session) -> Event | None:
    """The champion's promotion event, if it is still under watch and the watch has not ended."""
    champion = registry.get_champion(session)
    if champion is None:
        return None
    promoted = session.scalars(select(Event).where(Event.kind == "promoted", Event.subject == champion.version)
                               .order_by(col(Event.id).desc())).first()
    if promoted is None or not (promoted.data or {}).get("previous"):
        return None
    ended = session.scalars(select(Event.id).where(col(Event.id) > promoted.id,
                                                    col(Event.kind).in_(["watch_passed", "rolled_back"]))).first()
    return None if ended is not None else promoted


def _replaced(session: Session, version: str, before_id: int) -> datetime | None:
    """When ``version`` last stopped serving as champion before the event ``before_id`` (a promotion over it, or
    a rollback from it), by the database's clock; None when it never served."""
    ends = session.scalars(select(Event).where(col(Event.id) < before_id,
                                               col(Event.kind).in_(["promoted", "rolled_back"]))
                           .order_by(col(Event.id).desc()))
    for event in ends:
        data = event.data or {}
        if (data.get("previous") if event.kind == "promoted" else data.get("from")) == version:
            return event.created_at
    return None


def _alert(session: Session, rolled_back: ModelVersion, restored: ModelVersion, *, why: str) -> None:
    """The rollback's page, stored in the rollback's transaction."""
    alerts.enqueue(session, kind="rolled_back", subject=restored.version,
                   payload=alerts.rollback_payload(rolled_back.version, restored.version, why))


def check(settings: Settings, engine: Engine) -> dict[str, Any] | None:
    """Compare the new champion with the previous one; roll back on a drop. None when nothing is watched."""
    s = settings.scheduler
    with session_scope(engine) as session:
        promoted = _watched_promotion(session)
        if promoted is None:
            return None
        since, now = promoted.created_at, db_now(session)  # the event was stamped by the database's clock too
        new_version, old_version = promoted.subject or "", promoted.data["previous"]
        measures = settings.serving.feedback_measure_sources
        # Answers are told apart by the version that gave them, not by comparing their times (the serving host's
        # clock) with the promotion's (the database's): a serving host a minute behind would hide the new
        # champion's first minute. Only a version that served before, and was replaced, has answers to leave out:
        # those before its earlier reign ended, and those a host still gave after it, up to CLOCK_TOLERANCE
        # before this promotion.
        replaced = _replaced(session, new_version, promoted.id)
        after = None if replaced is None else max(replaced, since - CLOCK_TOLERANCE)
        new = _quality(session, new_version, sources=measures, after=after)
        # The previous champion's baseline: its last labelled answers, as many as the new one has, so both are
        # scored on recent traffic (after a drift, older answers were on traffic that no longer comes).
        old = _quality(session, old_version, sources=measures,
                       latest=min(PREVIOUS_LABELS, max(s.watch_min_labels, new.labelled)))
    figures = {"new": new.__dict__, "old": old.__dict__, "since": since.isoformat()}
    comparison = f"{new.words()} vs {old.words()}"
    over = now - since > timedelta(minutes=s.watch_minutes)
    if new.accuracy is not None and old.accuracy is not None and min(new.labelled, old.labelled) >= s.watch_min_labels:
        drop = old.accuracy - new.accuracy
        figures["drop"] = drop
        if drop >= s.rollback_drop:
            reason = (f"live accuracy fell {drop:.3f} (≥ {s.rollback_drop:g}) after the promotion: {comparison}")
            try:  # only from the version measured: a promotion may have replaced it since it was read
                restored = registry.rollback(engine, actor="watch", reason=reason, only_from=new_version,
                                             also=partial(_alert, why=reason) if settings.drift.webhook_url else None)
            except ChampionChangedError as exc:
                log.warning("no rollback of %s: %s", new_version, exc)
                return {"action": "skipped", "reason": str(exc), **figures}
            log.warning("rolled back %s → %s: %s", new_version, restored.version, reason)
            return {"action": "rolled_back", "reason": reason, "to": restored.version, **figures}
    if over:
        reason = f"no drop of {s.rollback_drop:g} or more in {s.watch_minutes:g} minutes: {comparison}"
        with session_scope(engine) as session:
            registry.record_event(session, kind="watch_passed", subject=new_version, reason=reason, actor="watch",
                                  data=figures)
        return {"action": "passed", "reason": reason, **figures}
    return {"action": "watching", "reason": comparison, **figures}

