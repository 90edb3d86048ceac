"""Retention of the prediction log: unlabelled predictions older than a cutoff are deleted in batches.

Each batch is its own short transaction (select up to ``batch_rows`` ids through the ``created_at``
index, delete them by primary key), so SQLite's writer lock is held for a batch, not for the whole
prune, and the prediction log's inserts interleave with it; on PostgreSQL both statements are index
scans. Labelled predictions are kept: they are training data.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

from sqlalchemy import Engine, delete, exists, select
from sqlmodel import col

from refitd.core.tables import Feedback, Prediction, ShadowScore

log = logging.getLogger(__name__)


def prune_predictions(engine: Engine, cutoff: datetime, *, batch_rows: int = 5000, pause_s: float = 0.0) -> int:
    """Delete predictions created before ``cutoff`` that have no feedback (and their shadow scores); return how
    many predictions were deleted."""
    labelled = exists().where(col(Feedback.prediction_id) == col(Prediction.id))
    oldest_first = (select(Prediction.id).where(col(Prediction.created_at) < cutoff, ~labelled)
                    .order_by(col(Prediction.created_at)).limit(batch_rows))
    deleted = 0
    while True:
        with engine.begin() as conn:
            ids = list(conn.execute(oldest_first).scalars())
            if ids:
                conn.execute(delete(ShadowScore).where(col(ShadowScore.prediction_id).in_(ids)))
                conn.execute(delete(Prediction).where(col(Prediction.id).in_(ids)))
        deleted += len(ids)
        if len(ids) < batch_rows:
            return deleted
        if pause_s:
            time.sleep(pause_s)  # let other writers in between batches
