"""Feedback joined to the predictions it labels: the reads training and monitoring share."""

from __future__ import annotations

from datetime import timedelta

from refitd.core.db import session_scope
from refitd.core.labels import labelled_accuracy, labelled_rows, predictions_with_labels
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
        bare = predictions_with_labels(s, model_version="v1", content=False)  # answers and labels, no text read
        assert list(bare.columns) == ["created_at", "model_version", "label", "confidence", "true_label"]
        assert bare["true_label"].tolist() == ["neutral", "negative"]
        assert sorted(labelled_rows(s)["text"]) == ["a bare text", "text 0", "text 2", "text 3"]


def test_labelled_accuracy_counts_in_the_database_what_the_frame_shows(engine) -> None:  # type: ignore[no-untyped-def]
    """The promotion watch's figures without reading rows: the same counts as the labelled frame, for a version,
    a time range and the latest N labelled answers."""
    import random

    rng, now = random.Random(5), utcnow()
    with session_scope(engine) as s:
        for i in range(120):
            s.add(Prediction(id=f"q{i}", created_at=now - timedelta(seconds=1000 - i), model_version=rng.choice(["v1", "v2"]),
                             text=f"t {i}", label=rng.choice(["a", "b"]), scores={}, confidence=0.5, latency_ms=1.0))
            s.flush()
            if rng.random() < 0.7:
                s.add(Feedback(prediction_id=f"q{i}", label=rng.choice(["a", "b", "c"])))
    cases = [{}, {"latest": 25}, {"after": now - timedelta(seconds=950), "before": now - timedelta(seconds=930)},
             {"after": now}]
    with session_scope(engine) as s:
        for kw in cases:
            frame = predictions_with_labels(s, model_version="v1", **kw)
            n, acc = labelled_accuracy(s, model_version="v1", **kw)
            assert n == len(frame), kw
            if n:
                assert acc == float((frame["label"] == frame["true_label"]).mean()), kw
            else:
                assert acc is None
        assert labelled_accuracy(s, model_version="v1")[0] > 25


def test_only_labels_that_measure_count_as_measured(engine) -> None:  # type: ignore[no-untyped-def]
    """A correction (sent because the answer looked wrong) trains but measures nothing: with
    ``serving.feedback_measure_sources`` the monitoring reads and the database count see it as no label, the
    shadow's figures too, while training still reads every label."""
    from refitd.core.shadow import figures, record_scores

    now = utcnow()
    with session_scope(engine) as s:
        for i in range(10):  # v1 answered "a" to all; the truth is "a" for the even ones
            s.add(Prediction(id=f"m{i}", created_at=now - timedelta(seconds=100 - i), model_version="v1",
                             text=f"m {i}", label="a", scores={}, confidence=0.5, latency_ms=1.0))
        s.flush()
        record_scores(s, [{"version": "v2", "prediction_id": f"m{i}", "label": "b", "confidence": 0.6}
                          for i in range(10)])
        for i in range(0, 10, 2):  # an audit of every other answer: right, by chance, each time
            s.add(Feedback(prediction_id=f"m{i}", label="a", source="review"))
        for i in range(1, 10, 2):  # every other one was wrong, and users corrected each of those
            s.add(Feedback(prediction_id=f"m{i}", label="b", source="api"))
    with session_scope(engine) as s:
        assert labelled_accuracy(s, model_version="v1") == (10, 0.5)  # the corrections halve it
        assert labelled_accuracy(s, model_version="v1", sources=["review"]) == (5, 1.0)
        window = predictions_with_labels(s, unlabelled=True, sources=["review"])
        assert len(window) == 10 and window["true_label"].notna().sum() == 5  # a correction reads as no label
        assert set(window.loc[window["true_label"].notna(), "text"]) == {f"m {i}" for i in range(0, 10, 2)}
        assert len(predictions_with_labels(s, sources=["review", "import"])) == 5
        every, audited = figures(s, "v2"), figures(s, "v2", sources=["review"])
        assert (every["labelled"], every["accuracy"], every["champion_accuracy"]) == (10, 0.5, 0.5)
        assert (audited["labelled"], audited["accuracy"], audited["champion_accuracy"]) == (5, 0.0, 1.0)
        assert len(labelled_rows(s)) == 10  # training reads them all
