"""Bundled-corpus tweets scored once by a real ONNX model, for the drift tests that need many windows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


@dataclass
class Pool:
    """Scored rows of one kind of traffic: text, label, confidence, and the embeddings the log would hold."""

    frame: pd.DataFrame
    emb: np.ndarray

    def take(self, idx: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
        return self.frame.iloc[idx].reset_index(drop=True), self.emb[idx]


@pytest.fixture(scope="session")
def scored_pools(untrained_artifact: Path) -> dict[str, Pool]:
    """1,400 airline tweets (the reference's topic) and 400 about other topics, scored by the same model."""
    from refitd.core.datasets import load_bundled_corpus
    from refitd.daemon.drift.check import score
    from refitd.serving.runtime import OnnxClassifier

    corpus = load_bundled_corpus()
    runtime = OnnxClassifier("v1", untrained_artifact, provider="cpu")
    runtime.load()
    pools = {}
    for name, rows in (("airline", corpus[corpus["topic"] == "airline"].sample(1400, random_state=3)),
                       ("other", corpus[corpus["topic"] != "airline"].sample(400, random_state=3))):
        frame, emb = score(runtime, rows["text"].tolist())
        pools[name] = Pool(frame, emb)
    return pools
