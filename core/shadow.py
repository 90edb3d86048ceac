"""Shadow scores: a candidate's answers to live requests the champion answered, and what they add up to.

Serving writes the rows (:func:`record_scores`); the daemon's shadow watch and ``refitd models show`` read
the figures (:func:`figures`): each shadow answer is joined to the champion's logged answer to the same
request by ``prediction_id``, and to its feedback label where one arrived.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import case, func, insert, select
from sqlmodel import Session, col

from refitd.core.labels import labelled_by
from refitd.core.tables import Feedback, Prediction, ShadowScore


def record_scores(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert shadow answers: dicts with version, prediction_id, label, confidence (created_at optional)."""
    if rows:
        session.execute(insert(ShadowScore), rows)


def figures(session: Session, version: str, *, sources: Collection[str] | None = None) -> dict[str, Any]:
    """What the shadow scored so far: requests, agreement with the champion, both mean confidences, and both
    accuracies on the requests that got a label (from ``sources`` when given: ``serving.feedback_measure_sources``; None
    while none did). A version is in shadow once (it leaves promoted or rejected), so its scores are told apart
    by version alone, never by comparing the serving hosts' clocks with the shadow's start (the database's)."""
    agree = _count(ShadowScore.label == Prediction.label)
    joined = (select(func.count(), agree, func.avg(ShadowScore.confidence), func.avg(Prediction.confidence))
              .select_from(ShadowScore).join(Prediction, Prediction.id == ShadowScore.prediction_id)
              .where(ShadowScore.version == version))
    labelled = (select(func.count(),
                       _count(ShadowScore.label == Feedback.label),
                       _count(Prediction.label == Feedback.label))
                .select_from(ShadowScore).join(Prediction, Prediction.id == ShadowScore.prediction_id)
                .join(Feedback, labelled_by(sources, ShadowScore.prediction_id))
                .where(ShadowScore.version == version))
    n, agreeing, confidence, champion_confidence = session.execute(joined).one()
    n_labelled, shadow_right, champion_right = session.execute(labelled).one()
    champion = session.execute(select(Prediction.model_version).join(ShadowScore, Prediction.id == ShadowScore.prediction_id)
                               .where(ShadowScore.version == version).order_by(col(ShadowScore.id).desc()).limit(1)).scalar()
    return {
        "version": version, "champion": champion, "scored": int(n or 0),
        "agreement": float(agreeing) / n if n else None,
        "confidence": _f(confidence), "champion_confidence": _f(champion_confidence),
        "labelled": int(n_labelled or 0),
        "accuracy": float(shadow_right) / n_labelled if n_labelled else None,
        "champion_accuracy": float(champion_right) / n_labelled if n_labelled else None,
    }


def _count(condition: Any) -> Any:
    return func.sum(case((condition, 1), else_=0))


def _f(value: Any) -> float | None:
    return None if value is None else float(value)
