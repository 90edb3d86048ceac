"""Retention prunes unlabelled predictions older than the cutoff, in batches, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import func, insert, select

from refitd.core.db import session_scope
from refitd.core.retention import prune_predictions
from refitd.core.tables import Feedback, Prediction, ShadowScore, new_prediction_id, utcnow


def _rows(n: int, *, days_ago: float) -> list[dict]:
    when = utcnow() - timedelta(days=days_ago)
    return [{"id": new_prediction_id(), "created_at": when, "model_version": "v1", "text": f"text {i}", "label": "a",
             "scores": {"a": 0.9, "b": 0.1}, "confidence": 0.9, "latency_ms": 1.0, "embedding": None} for i in range(n)]


def test_old_unlabelled_rows_go_in_batches_and_labelled_ones_stay(engine) -> None:
    old, recent = _rows(2_345, days_ago=40), _rows(300, days_ago=1)
    with engine.begin() as conn:
        conn.execute(insert(Prediction), old + recent)
    with session_scope(engine) as session:
        session.add_all(Feedback(prediction_id=r["id"], label="b") for r in old[:7])

    deleted = prune_predictions(engine, utcnow() - timedelta(days=30), batch_rows=500)

    assert deleted == 2_345 - 7
    with session_scope(engine) as session:
        left = set(session.execute(select(Prediction.id)).scalars())
    assert left == {r["id"] for r in old[:7] + recent}
    assert prune_predictions(engine, utcnow() - timedelta(days=30), batch_rows=500) == 0


def test_the_prediction_log_writes_while_a_prune_runs(engine) -> None:
    with engine.begin() as conn:
        conn.execute(insert(Prediction), _rows(6_000, days_ago=40))
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for _ in range(20):
                with engine.begin() as conn:
                    conn.execute(insert(Prediction), _rows(25, days_ago=0))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    deleted = prune_predictions(engine, utcnow() - timedelta(days=30), batch_rows=500, pause_s=0.005)
    writer.join()
    assert not errors and deleted == 6_000
    with session_scope(engine) as session:
        assert session.execute(select(func.count()).select_from(Prediction)).scalar() == 500


def test_shadow_scores_go_with_their_predictions_and_orphans_past_the_cutoff_go_too(engine) -> None:
    old, recent = _rows(40, days_ago=40), _rows(10, days_ago=1)
    with engine.begin() as conn:
        conn.execute(insert(Prediction), old + recent)
    long_ago, lately = utcnow() - timedelta(days=40), utcnow() - timedelta(days=1)
    scores = [ShadowScore(version="v2", prediction_id=r["id"], label="a", confidence=0.8, created_at=long_ago)
              for r in old]
    unlogged = [new_prediction_id() for _ in range(3)]  # their predictions never reached the table
    scores += [ShadowScore(version="v2", prediction_id=pid, label="a", confidence=0.8, created_at=when)
               for pid, when in zip(unlogged, (long_ago, long_ago, lately))]
    with session_scope(engine) as session:
        session.add_all(scores)
        session.add(Feedback(prediction_id=old[0]["id"], label="b"))

    assert prune_predictions(engine, utcnow() - timedelta(days=30), batch_rows=7) == 39

    with session_scope(engine) as session:
        left = list(session.execute(select(ShadowScore.prediction_id, ShadowScore.created_at)).all())
    assert sorted(pid for pid, _ in left) == sorted([old[0]["id"], unlogged[-1]])
