"""Retention prunes unlabelled predictions older than the cutoff, in batches, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta
from types import SimpleNamespace

from sqlalchemy import delete, func, insert, select

from refitd.core.db import session_scope
from refitd.core.errors import NotFoundError
from refitd.core.retention import prune_predictions
from refitd.core.tables import Feedback, Prediction, ShadowScore, new_prediction_id, utcnow
from refitd.serving.dataplane import DataPlane


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


def test_a_store_without_delete_returning_prunes_the_same(engine, monkeypatch) -> None:
    """SQLite before 3.35 (Debian 11, Ubuntu 20.04) has no DELETE … RETURNING."""
    monkeypatch.setattr(engine.dialect, "delete_returning", False)
    old = _rows(30, days_ago=40)
    with engine.begin() as conn:
        conn.execute(insert(Prediction), old)
    with session_scope(engine) as session:
        session.add(Feedback(prediction_id=old[0]["id"], label="b"))
        session.add(ShadowScore(version="v2", prediction_id=old[1]["id"], label="a", confidence=0.8))
    assert prune_predictions(engine, utcnow() - timedelta(days=30), batch_rows=7) == 29
    with session_scope(engine) as session:
        assert set(session.execute(select(Prediction.id)).scalars()) == {old[0]["id"]}
        assert session.execute(select(func.count()).select_from(ShadowScore)).scalar() == 0


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


def _label(engine, prediction_id: str) -> object:  # type: ignore[no-untyped-def]
    """The server's label write (the part that touches the store), its answer or its error."""
    try:
        return DataPlane._upsert_feedback(SimpleNamespace(engine=engine), label="b",  # type: ignore[arg-type]
                                          prediction_id=prediction_id, text=None, source="api")
    except Exception as exc:  # noqa: BLE001 - the test reads it
        return exc


def test_a_label_arriving_while_a_prune_deletes_its_prediction_is_refused_not_orphaned(engine) -> None:
    """The prune has its batch (selected, locked on PostgreSQL; SQLite's writers take turns) when a label for one
    of its rows arrives: the label waits for the batch, then finds no prediction (404), and no label is left
    pointing at a deleted prediction, whose text no refit could read."""
    (row,) = _rows(1, days_ago=40)
    with engine.begin() as conn:
        conn.execute(insert(Prediction), [row])
    outcome: list[object] = []
    with engine.begin() as conn:  # what a prune's batch does, held open
        ids = list(conn.execute(select(Prediction.id).where(Prediction.id == row["id"])
                                .with_for_update(skip_locked=True)).scalars())
        assert ids == [row["id"]]
        writer = threading.Thread(target=lambda: outcome.append(_label(engine, row["id"])))
        writer.start()
        writer.join(1.0)
        assert writer.is_alive()  # the label waits for the batch
        conn.execute(delete(Prediction).where(Prediction.id.in_(ids)))  # type: ignore[attr-defined]
    writer.join(30)
    assert isinstance(outcome[0], NotFoundError), outcome
    with session_scope(engine) as session:
        assert session.execute(select(func.count()).select_from(Feedback)).scalar() == 0


def test_a_prune_keeps_a_prediction_whose_label_is_being_written(engine) -> None:
    """A label being written for an old prediction (its row locked as the server locks it, the label inserted,
    not yet committed): the prune passes over that row, and the prediction stays with its label."""
    old = _rows(3, days_ago=40)
    with engine.begin() as conn:
        conn.execute(insert(Prediction), old)
    pruned: list[int] = []
    if engine.dialect.name == "sqlite":  # one writer at a time: the prune runs after the label's transaction
        with engine.begin() as conn:
            conn.execute(insert(Feedback), [{"prediction_id": old[0]["id"], "label": "b", "source": "api",
                                             "created_at": utcnow()}])
            pruner = threading.Thread(target=lambda: pruned.append(
                prune_predictions(engine, utcnow() - timedelta(days=30), batch_rows=10)))
            pruner.start()
            pruner.join(1.0)
            assert pruner.is_alive()
    else:
        with engine.begin() as conn:
            conn.execute(select(Prediction.id).where(Prediction.id == old[0]["id"])
                         .with_for_update(read=True, key_share=True))
            conn.execute(insert(Feedback), [{"prediction_id": old[0]["id"], "label": "b", "source": "api",
                                             "created_at": utcnow()}])
            pruner = threading.Thread(target=lambda: pruned.append(
                prune_predictions(engine, utcnow() - timedelta(days=30), batch_rows=10)))
            pruner.start()
            pruner.join(30)  # it skips the locked row: it does not wait for the label
            assert not pruner.is_alive() and pruned == [2]
    pruner.join(30)
    assert pruned == [2]
    with session_scope(engine) as session:
        left = set(session.execute(select(Prediction.id)).scalars())
        labelled = set(session.execute(select(Feedback.prediction_id)).scalars())
    assert left == labelled == {old[0]["id"]}
