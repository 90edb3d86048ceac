"""Drift signals on the bundled corpus: airline traffic vs a shift to other topics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from refitd.core.datasets import load_bundled_corpus
from refitd.daemon.drift.signals import add_descriptors, embedding_signal, value_drift_report, verdict, vocabulary
from refitd.serving.runtime import OnnxClassifier


@pytest.fixture(scope="module")
def windows(untrained_artifact):
    """Reference, a clean airline window and a window with 40% other topics, scored by a real ONNX model."""
    corpus = load_bundled_corpus()
    airline = corpus[corpus["topic"] == "airline"].sample(1800, random_state=0)
    other = corpus[corpus["topic"] != "airline"].sample(240, random_state=0)
    runtime = OnnxClassifier("v1", untrained_artifact, provider="cpu")
    runtime.load()

    def scored(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        out = runtime.predict(frame["text"].tolist())
        return frame.assign(label=out.labels, confidence=out.scores.max(axis=1)), out.embeddings

    ref, ref_emb = scored(airline.iloc[:1200])
    vocab = vocabulary(ref["text"].iloc[0::2])
    ref, ref_emb = ref.iloc[1::2], ref_emb[1::2]
    clean, clean_emb = scored(airline.iloc[1200:1600])
    mixed, mixed_emb = scored(pd.concat([airline.iloc[1600:1800], other.iloc[:200]]))
    return ([add_descriptors(f, vocab) for f in (ref, clean, mixed)], (ref_emb, clean_emb, mixed_emb))


def test_clean_airline_window_is_not_drifted(windows) -> None:
    (ref, clean, _), (ref_emb, clean_emb, _) = windows
    _, signals = value_drift_report(ref, clean)
    signals.append(embedding_signal(ref_emb, clean_emb))
    word, reason = verdict(signals, window=len(clean), min_window=200)
    assert word == "not_drifted", reason


def test_shift_to_other_topics_is_drifted_with_text_and_embedding_named(windows) -> None:
    (ref, _, mixed), (ref_emb, _, mixed_emb) = windows
    snapshot, signals = value_drift_report(ref, mixed)
    signals.append(embedding_signal(ref_emb, mixed_emb))
    word, reason = verdict(signals, window=len(mixed), min_window=200)
    drifted = {s.name for s in signals if s.drifted}
    assert word == "drifted" and {"text", "embedding"} <= drifted, reason
    assert snapshot.dict()["metrics"]  # a real Evidently snapshot, renderable as HTML


def test_tiny_window_is_insufficient_never_a_false_alarm() -> None:
    word, reason = verdict([], window=12, min_window=200)
    assert word == "insufficient_data" and "at least 200" in reason


def test_configured_methods_and_thresholds_apply(windows) -> None:
    from refitd.daemon.drift.signals import specs_from

    (ref, _, mixed), _ = windows
    specs = specs_from({"confidence": "ks"}, {"text": 0.99})
    _, signals = value_drift_report(ref, mixed, specs)
    by_name = {s.name: s for s in signals}
    assert not by_name["text"].drifted and by_name["text"].threshold == 0.99
    conf = by_name["confidence"]
    assert conf.method == "ks" and conf.threshold == 0.05 and conf.drifted == (conf.score < 0.05)  # a p-value
