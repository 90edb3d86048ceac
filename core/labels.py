"""Labelled production data: feedback joined to the predictions it labels."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
from sqlalchemy import func, select
from sqlmodel import Session

from refitd.core.tables import Feedback, Prediction


def labelled_rows(session: Session, *, since: datetime | None = None) -> pd.DataFrame:
    """text, label, predicted, model_version, created_at (of the label), source — for every feedback row."""
    query = (
        select(
            func.coalesce(Prediction.text, Feedback.text).label("text"),
            Feedback.label,
            Prediction.label.label("predicted"),
            Prediction.model_version,
            Feedback.created_at,
            Feedback.source,
        )
        .select_from(Feedback)
        .outerjoin(Prediction, Prediction.id == Feedback.prediction_id)
        .order_by(Feedback.created_at)
    )
    if since is not None:
        query = query.where(Feedback.created_at > since)
    rows = session.execute(query).all()
    frame = pd.DataFrame(rows, columns=["text", "label", "predicted", "model_version", "created_at", "source"])
    return frame[frame["text"].notna()].reset_index(drop=True)


def count_labels_since(session: Session, since: datetime | None) -> int:
    """How many feedback labels arrived after ``since`` (all when None)."""
    query = select(func.count()).select_from(Feedback)
    if since is not None:
        query = query.where(Feedback.created_at > since)
    return int(session.execute(query).scalar_one())
