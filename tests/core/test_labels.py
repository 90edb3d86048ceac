"""Feedback joined to the predictions it labels: the reads training and monitoring share."""

from __future__ import annotations

from datetime import timedelta

from refitd.core.db import session_scope
from refitd.core.labels import labelled_rows, predictions_with_labels
from refitd.core.tables import Feedback, Prediction, utcnow


def test_predictions_with_labels_filters_and_joins(engine) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    with session_scope(engine) as s:
        for i, (version, truth) in enumerate([("v1", "negative"), ("v1", None), ("v2", "positive"), ("v1", "neutral")]):
            s.add(Prediction(id=f"p{i}", created_at=now - timedelta(minutes=10 - i), model_version=version,
                             text=f"text {i}", label="neutral", scores={}, confidence=0.5, latency_ms=1.0))
            s.flush()
            if truth:
                s.add(Feedback(prediction_id=f"p{i}", label=truth))
        s.add(Feedback(text="a bare text", label="positive"))  # a label with no prediction
    with session_scope(engine) as s:
        every = predictions_with_labels(s, unlabelled=True)
        assert every["text"].tolist() == ["text 3", "text 2", "text 1", "text 0"]  # newest first
        assert every["true_label"].tolist() == ["neutral", "positive", None, "negative"]
        v1 = predictions_with_labels(s, model_version="v1")
        assert v1["text"].tolist() == ["text 3", "text 0"]  # labelled only
        window = predictions_with_labels(s, model_version="v1", after=now - timedelta(minutes=10), before=now - timedelta(minutes=7))
        assert window["text"].tolist() == ["text 0"]  # after is inclusive, before exclusive
        assert predictions_with_labels(s, unlabelled=True, latest=2)["text"].tolist() == ["text 3", "text 2"]
        assert sorted(labelled_rows(s)["text"]) == ["a bare text", "text 0", "text 2", "text 3"]
