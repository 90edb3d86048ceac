"""Labelled production data: feedback joined to the predictions it labels.

The one place that joins the two tables: training reads every label with its text
(:func:`labelled_rows`), monitoring reads served predictions with their labels
(:func:`predictions_with_labels`), the promotion watch counts a version's right answers in the database
(:func:`labelled_accuracy`). pandas is imported by the two that return frames, not here: the daemon
process (triggers, the watch) counts without it.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Select, and_, case, func, select
from sqlmodel import Session, col

from refitd.core.tables import Feedback, Prediction

if TYPE_CHECKING:
    import pandas as pd


def labelled_rows(session: Session, *, since: datetime | None = None) -> pd.DataFrame:
    """text, label, predicted, model_version, created_at (of the label), source, corrected_at — for every
    feedback row."""
    query = (
        select(
            func.coalesce(Prediction.text, Feedback.text).label("text"),
            Feedback.label,
            Prediction.label.label("predicted"),
            Prediction.model_version,
            Feedback.created_at,
            Feedback.source,
            Feedback.corrected_at,
        )
        .select_from(Feedback)
        .outerjoin(Prediction, Prediction.id == Feedback.prediction_id)
        .order_by(Feedback.created_at)
    )
    if since is not None:
        query = query.where(Feedback.created_at > since)
    rows = session.execute(query).all()
    import pandas as pd

    frame = pd.DataFrame(rows, columns=["text", "label", "predicted", "model_version", "created_at", "source",
                                        "corrected_at"])
    return frame[frame["text"].notna()].reset_index(drop=True)


def predictions_with_labels(
    session: Session, *, unlabelled: bool = False, model_version: str | None = None,
    after: datetime | None = None, before: datetime | None = None, latest: int | None = None,
    content: bool = True, sources: Collection[str] | None = None,
) -> pd.DataFrame:
    """Served predictions, newest first, each with the feedback label given for it as ``true_label``.

    Only labelled ones unless ``unlabelled`` (then ``true_label`` is None where nobody labelled it);
    optionally one model version's, served at or after ``after`` and before ``before``, the ``latest`` N.
    Without ``content`` the text and embedding columns are not read (answers and labels only: a tenth of the bytes).
    With ``sources`` (``serving.feedback_measure_sources``), only labels from those count; another source's label
    reads as none: a label sent because the answer looked wrong is no sample of how often answers are right.
    """
    fields = {"created_at": Prediction.created_at, "model_version": Prediction.model_version,
              "text": Prediction.text, "label": Prediction.label, "confidence": Prediction.confidence,
              "embedding": Prediction.embedding, "true_label": Feedback.label.label("true_label")}
    if not content:
        del fields["text"], fields["embedding"]
    query = select(*fields.values())
    query = _served(query.join(Feedback, labelled_by(sources), isouter=unlabelled),
                    model_version=model_version, after=after, before=before)
    rows = session.execute(query.order_by(col(Prediction.created_at).desc()).limit(latest)).all()
    import pandas as pd

    return pd.DataFrame(rows, columns=list(fields))


def labelled_accuracy(session: Session, *, model_version: str, after: datetime | None = None,
                      before: datetime | None = None, latest: int | None = None,
                      sources: Collection[str] | None = None) -> tuple[int, float | None]:
    """How many of ``model_version``'s answers (served at or after ``after``, before ``before``; the ``latest``
    N labelled ones) have a label (from ``sources``, when given), and the share of them it got right (None
    without any), counted by the database: the rows of :func:`predictions_with_labels` without reading them."""
    right = case((col(Prediction.label) == col(Feedback.label), 1), else_=0)
    query = _served(select(right.label("right")).join(Feedback, labelled_by(sources)),
                    model_version=model_version, after=after, before=before)
    if latest is not None:
        query = query.order_by(col(Prediction.created_at).desc()).limit(latest)
    rows = query.subquery()
    n, correct = session.execute(select(func.count(), func.sum(rows.c.right))).one()
    return int(n), (int(correct) / n if n else None)


def kept_source(stored: str | None, new: str, sources: Collection[str] | None) -> str:
    """The source a prediction's label is stored under when ``new`` labels it after ``stored`` (None: the first
    label): once a measuring source (``sources``; None: all) labelled the answer it stays measured — it was
    picked without looking at it, whatever a later correction says — else the newest source."""
    return stored if sources is not None and stored in sources and new not in sources else new  # type: ignore[return-value]


def labelled_by(sources: Collection[str] | None, prediction_id: Any = Prediction.id) -> ColumnElement[bool]:
    """The join of a prediction (``prediction_id``: its id column here or in another table) to its label, narrowed
    to labels from ``sources`` when given."""
    on = Feedback.prediction_id == prediction_id
    return on if sources is None else and_(on, col(Feedback.source).in_(list(sources)))


def _served(query: Select, *, model_version: str | None, after: datetime | None, before: datetime | None) -> Select:
    """``query`` narrowed to one version's predictions (when given), served at or after ``after`` and before
    ``before``."""
    if model_version is not None:
        query = query.where(Prediction.model_version == model_version)
    if after is not None:
        query = query.where(col(Prediction.created_at) >= after)
    if before is not None:
        query = query.where(col(Prediction.created_at) < before)
    return query


def count_labels_since(session: Session, since: datetime | None) -> int:
    """How many feedback labels arrived after ``since`` (all when None)."""
    query = select(func.count()).select_from(Feedback)
    if since is not None:
        query = query.where(Feedback.created_at > since)
    return int(session.execute(query).scalar_one())
