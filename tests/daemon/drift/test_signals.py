"""Drift signals on the bundled corpus: airline traffic vs a shift to other topics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from refitd.core.datasets import load_bundled_corpus
from refitd.daemon.drift.signals import (
    DEFAULT_SPECS,
    P_VALUE_METHODS,
    Signal,
    SignalSpec,
    add_descriptors,
    embedding_signal,
    specs_from,
    value_drift_report,
    verdict,
    vocabulary,
)
from refitd.serving.runtime import OnnxClassifier


@pytest.fixture(scope="module")
def windows(untrained_artifact):
    """Reference, a clean airline window and a window half about other topics, scored by a real ONNX model."""
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
    by_name = {s.name: s for s in signals}
    scores = {s.name: round(s.score, 3) for s in signals}
    # Same topic, unseen rows: neither classifier can tell the windows apart much better than chance.
    assert by_name["text"].score < 0.55 and by_name["embedding"].score < 0.55, scores
    word, reason = verdict(signals, window=len(clean), min_window=200)
    assert word == "not_drifted", reason


def test_shift_to_other_topics_is_drifted_with_text_and_embedding_named(windows, tmp_path) -> None:
    (ref, clean, mixed), (ref_emb, _, mixed_emb) = windows
    snapshot, signals = value_drift_report(ref, mixed)
    # Each signal is its own metric of the Evidently report, in the order of the specs, scored and judged
    # against its own threshold; the embedding signal is a domain classifier's ROC AUC.
    metrics = snapshot.dict()["metrics"]
    assert [(m["config"]["column"], m["config"]["method"], m["value"]) for m in metrics] == \
        [(spec.column, spec.method, s.score) for spec, s in zip(DEFAULT_SPECS, signals, strict=True)]
    signals.append(embedding_signal(ref_emb, mixed_emb))
    assert [(s.name, s.method, s.threshold) for s in signals] == \
        [(spec.name, spec.method, spec.threshold) for spec in DEFAULT_SPECS] + [("embedding", "model", 0.55)]
    assert all(s.drifted == (s.score > s.threshold) for s in signals)  # distances and AUCs: drift above
    by_name = {s.name: s for s in signals}
    scores = {s.name: round(s.score, 3) for s in signals}
    # Half the window is about other topics: a classifier tells the windows apart by their words and by
    # their embeddings (ROC AUC ~0.68 each, ~0.5 on the clean window), and those words are more often
    # outside the airline reference's vocabulary.
    assert by_name["text"].score > 0.6 and by_name["embedding"].score > 0.6, scores
    assert by_name["oov_share"].drifted and mixed["oov_share"].mean() > clean["oov_share"].mean() + 0.05
    word, reason = verdict(signals, window=len(mixed), min_window=200)
    drifted = [s for s in signals if s.drifted]
    assert word == "drifted" and reason.startswith(f"{len(drifted)} signals drifted (needs 2): "), reason
    for name in ("text", "embedding"):
        assert f"{name} {by_name[name].score:.3f} > 0.55" in reason
    snapshot.save_html(str(tmp_path / "report.html"))  # the report a drift check stores
    assert "<html" in (tmp_path / "report.html").read_text()


def _signal(name: str, score: float, *, method: str = "wasserstein", threshold: float = 0.2) -> Signal:
    higher_is_drift = method not in P_VALUE_METHODS
    return Signal(name, method, score, threshold, score > threshold if higher_is_drift else score < threshold)


def test_verdict_needs_min_drifted_signals_and_names_each_with_its_direction() -> None:
    text = _signal("text", 0.8, method="abs_text_content_drift", threshold=0.55)
    confidence = _signal("confidence", 0.01, method="ks", threshold=0.05)  # a p-value: drifted below
    label = _signal("label", 0.05, method="jensenshannon", threshold=0.1)
    assert text.drifted and confidence.drifted and not label.drifted
    assert verdict([text, confidence, label], window=300, min_window=200) == (
        "drifted", "2 signals drifted (needs 2): text 0.800 > 0.55, confidence 0.010 < 0.05")
    assert verdict([text, label], window=300, min_window=200) == (
        "not_drifted", "1 signals drifted (needs 2): text 0.800 > 0.55")
    assert verdict([text, confidence], window=300, min_window=200, min_drifted=3)[0] == "not_drifted"
    assert verdict([text], window=300, min_window=200, min_drifted=1)[0] == "drifted"
    assert verdict([label], window=300, min_window=200) == ("not_drifted", "0 signals drifted (needs 2): none")


def test_tiny_window_is_insufficient_never_a_false_alarm() -> None:
    every = [_signal(name, 0.9) for name in ("text", "label", "confidence", "embedding")]
    assert verdict(every, window=199, min_window=200) == (
        "insufficient_data", "window has 199 predictions; a check needs at least 200")
    assert verdict(every, window=200, min_window=200)[0] == "drifted"  # the same signals, enough predictions
    assert verdict([], window=12, min_window=200)[0] == "insufficient_data"


def test_configured_methods_and_thresholds_apply(windows) -> None:
    (ref, _, mixed), _ = windows
    assert specs_from({}, {}) == DEFAULT_SPECS
    specs = specs_from({"confidence": "ks"}, {"text": 0.99})
    by_spec = {spec.name: spec for spec in specs}
    assert by_spec["confidence"] == SignalSpec("confidence", "confidence", "ks", 0.05, higher_is_drift=False)
    assert by_spec["text"] == SignalSpec("text", "text", "abs_text_content_drift", 0.99)
    _, signals = value_drift_report(ref, mixed, specs)
    by_name = {s.name: s for s in signals}
    assert not by_name["text"].drifted and by_name["text"].threshold == 0.99 and by_name["text"].score <= 0.99
    conf = by_name["confidence"]
    assert conf.method == "ks" and conf.threshold == 0.05 and 0.0 <= conf.score <= 1.0  # a p-value
    assert conf.drifted == (conf.score < 0.05)
