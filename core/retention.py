"""Retention of the prediction log: unlabelled predictions older than a cutoff are deleted in batches.

Each batch is its own short transaction (select up to ``batch_rows`` ids through the ``created_at``
index, delete them by primary key), so SQLite's writer lock is held for a batch, not for the whole
prune, and the prediction log's inserts interleave with it; on PostgreSQL both statements are index
scans. Labelled predictions are kept: they are training data. A label written during a prune never ends up
without its prediction: the prune locks the rows it selects (skipping rows a label is being written for) and
deletes only those still unlabelled; the server writes a label in one transaction with its prediction's row
locked, and answers 404 if the prune deleted it first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Select, delete, exists, select
from sqlmodel import col

from refitd.core.tables import Feedback, Prediction, ShadowScore

log = logging.getLogger(__name__)


def prune_predictions(engine: Engine, cutoff: datetime, *, batch_rows: int = 5000, pause_s: float = 0.0) -> int:
    """Delete predictions created before ``cutoff`` that have no feedback (and their shadow scores), then the
    shadow scores before ``cutoff`` whose prediction is not in the table (it never reached it: a crash
    between the shadow's write and the log's flush); return how many predictions were deleted."""
    labelled = exists().where(col(Feedback.prediction_id) == col(Prediction.id))
    # Locked as selected (PostgreSQL; rows a label is being written for are skipped), and the delete checks for a
    # label again in its own statement: a label committed between the two keeps its prediction.
    oldest_first = (select(Prediction.id).where(col(Prediction.created_at) < cutoff, ~labelled)
                    .order_by(col(Prediction.created_at)).limit(batch_rows).with_for_update(skip_locked=True))

    def predictions(conn: Connection, ids: list[Any]) -> int:
        unlabelled = delete(Prediction).where(col(Prediction.id).in_(ids), ~labelled)
        if conn.dialect.delete_returning:
            gone = list(conn.execute(unlabelled.returning(Prediction.id)).scalars())
            deleted = len(gone)
        else:  # SQLite before 3.35: its writers take turns (BEGIN IMMEDIATE), so what was selected is still unlabelled
            gone, deleted = ids, conn.execute(unlabelled).rowcount
        if gone:
            conn.execute(delete(ShadowScore).where(col(ShadowScore.prediction_id).in_(gone)))
        return deleted

    deleted = _in_batches(engine, oldest_first, predictions, batch_rows, pause_s)
    logged = exists().where(col(Prediction.id) == col(ShadowScore.prediction_id))
    orphans = (select(ShadowScore.id).where(col(ShadowScore.created_at) < cutoff, ~logged)
               .order_by(col(ShadowScore.created_at)).limit(batch_rows))
    orphaned = _in_batches(engine, orphans,
                           lambda conn, ids: conn.execute(delete(ShadowScore).where(col(ShadowScore.id).in_(ids))).rowcount,
                           batch_rows, pause_s)
    if orphaned:
        log.info("retention: %s shadow scores of predictions never logged removed", orphaned)
    return deleted


def _in_batches(engine: Engine, oldest_first: Select, remove: Callable[[Connection, list[Any]], int],
                batch_rows: int, pause_s: float) -> int:
    """Select up to ``batch_rows`` ids and remove them (``remove`` says how many it removed), one short
    transaction a batch, until none is left."""
    done = 0
    while True:
        with engine.begin() as conn:
            ids = list(conn.execute(oldest_first).scalars())
            if ids:
                done += remove(conn, ids)
        if len(ids) < batch_rows:
            return done
        if pause_s:
            time.sleep(pause_s)  # let other writers in between batches
