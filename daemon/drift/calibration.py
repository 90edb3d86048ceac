"""Calibrated drift tests: a cheap two-sample statistic per signal, its null distribution drawn from
reference-vs-reference splits at the window size, and one cutoff that holds a whole check to
``drift.false_alarm_rate``.

Statistics (higher = further apart):

- text: unbiased MMD² between the mean TF-IDF vectors (sublinear tf, IDF of the fit rows — a word they
  never saw weighs most — each row l2-normed, words hashed with a sign into 512 dimensions);
- embedding: unbiased MMD² between the mean embeddings, PCA-whitened to 32 dimensions on the fit rows;
- label: Jensen–Shannon distance of the predicted-label shares (Evidently's ``jensenshannon``);
- confidence, length, oov_share, non_letter_share: Wasserstein-1 distance divided by the reference's
  standard deviation (Evidently's normed ``wasserstein``, the same number its report shows).

A random ``FIT_SHARE`` of a reference's rows (the "fit rows", fixed by its digest) only fits the
vocabulary, IDF and PCA; the rest is what a window is compared with. The null: ``draws`` random splits
of those rows into a pseudo-window of the window size and a pseudo-reference of the rest, every
statistic on the same splits.
A pseudo-window is at most half the rows; a null drawn at smaller sizes than a check's is wider, so the
check stays at or under its rate (conservative), never over it.

p-value of a score: (1 + #null ≥ score) / (draws + 1). Combination (single-step min-p, Westfall–Young):
the cutoff is the largest level at which at most ``false_alarm_rate`` of the null splits have any signal
at or below it; a signal drifts when its p-value is at or below the cutoff, a check when any signal does.
The cutoff is never below Bonferroni's rate / signals, and above it when signals move together.
"""

from __future__ import annotations

import hashlib
import math
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from refitd.daemon.drift.signals import WORD, Signal, add_descriptors

VERSION = 2  # bump when a statistic or the featurizer changes: stored calibrations are then rebuilt
SCALARS = ("confidence", "length", "oov_share", "non_letter_share")
VECTORS = ("text", "embedding")
SIGNALS = (*VECTORS, "label", *SCALARS)
METHODS = {"text": "tfidf_mmd", "embedding": "pca_mmd", "label": "jensenshannon"} | dict.fromkeys(SCALARS, "wasserstein")
FIT_SHARE = 0.25
TEXT_DIMS = 512
PCA_DIMS = 32
_CHUNK = 250  # null draws computed together (memory: a few chunk × reference-rows arrays)


def fit_rows(n: int) -> int:
    """How many rows of an n-row reference fit the featurizer; the rest is compared."""
    return min(max(2, int(n * FIT_SHARE)), n - 2)


@dataclass
class Features:
    """What the statistics read, per row: dense vectors, one-hot predicted labels, scalars."""

    vectors: dict[str, np.ndarray]
    labels: np.ndarray
    scalars: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: np.ndarray) -> Features:
        return Features({k: v[idx] for k, v in self.vectors.items()}, self.labels[idx],
                        {k: v[idx] for k, v in self.scalars.items()})

    @staticmethod
    def concat(parts: list[Features]) -> Features:
        first = parts[0]
        return Features({k: np.concatenate([p.vectors[k] for p in parts]) for k in first.vectors},
                        np.concatenate([p.labels for p in parts]),
                        {k: np.concatenate([p.scalars[k] for p in parts]) for k in first.scalars})


class Featurizer:
    """Fitted on a reference's fit rows: vocabulary, IDF, embedding PCA, label set."""

    def __init__(self, frame: pd.DataFrame, emb: np.ndarray) -> None:
        docs = [set(WORD.findall(t.lower())) for t in frame["text"]]
        self.vocab = set().union(*docs)
        n = len(docs)
        self.idf = {w: math.log((1 + n) / (1 + c)) + 1 for w, c in Counter(w for d in docs for w in d).items()}
        self.unseen_idf = math.log(1 + n) + 1
        self.labels = sorted(set(frame["label"]))
        x = emb.astype(np.float64)
        self.mean = x.mean(axis=0)
        _, s, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        k = max(1, min(PCA_DIMS, len(x) - 1, x.shape[1]))
        self.components = vt[:k]
        self.scale = np.maximum(s[:k] / math.sqrt(max(1, len(x) - 1)), 1e-6)
        self._hash: dict[str, tuple[int, float, float]] = {}

    def transform(self, frame: pd.DataFrame, emb: np.ndarray) -> Features:
        described = add_descriptors(frame, self.vocab)
        onehot = np.zeros((len(frame), len(self.labels) + 1))  # last column: a label the reference never had
        where = {label: i for i, label in enumerate(self.labels)}
        onehot[np.arange(len(frame)), [where.get(label, len(self.labels)) for label in frame["label"]]] = 1
        return Features(
            {"text": self._text(frame["text"]),
             "embedding": ((emb - self.mean) @ self.components.T) / self.scale},
            onehot, {name: described[name].to_numpy(np.float64) for name in SCALARS})

    def _text(self, texts: pd.Series) -> np.ndarray:
        out = np.zeros((len(texts), TEXT_DIMS))
        for row, text in enumerate(texts):
            counts = Counter(WORD.findall(text.lower()))
            if not counts:
                continue
            norm = math.sqrt(sum(((1 + math.log(c)) * self._word(w)[2]) ** 2 for w, c in counts.items()))
            for word, c in counts.items():
                dim, sign, idf = self._word(word)
                out[row, dim] += sign * (1 + math.log(c)) * idf / norm
        return out

    def _word(self, word: str) -> tuple[int, float, float]:
        if word not in self._hash:  # crc32, not hash(): the same dimension in every process
            h = zlib.crc32(word.encode())
            self._hash[word] = (h % TEXT_DIMS, 1.0 if h >> 31 else -1.0, self.idf.get(word, self.unseen_idf))
        return self._hash[word]


@dataclass
class Reference:
    """A champion's reference ready for checks: the featurizer fitted on its head, the compared rows
    (with descriptors) and their embeddings and features, and a digest of it all."""

    frame: pd.DataFrame
    emb: np.ndarray
    featurizer: Featurizer
    features: Features
    digest: str

    @classmethod
    def prepare(cls, frame: pd.DataFrame, emb: np.ndarray) -> Reference:
        digest = hashlib.sha256(pd.util.hash_pandas_object(frame[["text", "label", "confidence"]], index=False)
                                .to_numpy().tobytes() + np.ascontiguousarray(emb, np.float32).tobytes()).hexdigest()
        # The fit rows are a random share, not the head: a reference of logged traffic is in time order, and
        # a window overlapping its newest rows must not meet them as the rows that made the vocabulary.
        order = np.random.default_rng(int(digest[:8], 16)).permutation(len(frame))
        fit, rest = order[: fit_rows(len(frame))], order[fit_rows(len(frame)):]
        featurizer = Featurizer(frame.iloc[fit], emb[fit])
        rows, rows_emb = frame.iloc[rest].reset_index(drop=True), emb[rest]
        return cls(add_descriptors(rows, featurizer.vocab), rows_emb, featurizer,
                   featurizer.transform(rows, rows_emb), digest[:16])


# -- the statistics, each written once for one window or for many null splits at a time (leading axes) --

def _dot(u: np.ndarray, v: np.ndarray) -> Any:
    return np.einsum("...d,...d->...", u, v)


def _mmd(sa: np.ndarray, qa: Any, na: int, sb: np.ndarray, qb: Any, nb: int) -> Any:
    """Unbiased MMD² of a linear kernel from per-side sums (s), sums of squared norms (q) and sizes (n)."""
    return (_dot(sa, sa) - qa) / (na * (na - 1)) + (_dot(sb, sb) - qb) / (nb * (nb - 1)) - 2 * _dot(sa, sb) / (na * nb)


def _js(pa: np.ndarray, pb: np.ndarray) -> Any:
    """Jensen–Shannon distance (natural log) between share vectors on the last axis."""
    m = (pa + pb) / 2

    def kl(p: np.ndarray) -> Any:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(p > 0, p * np.log(p / m), 0.0).sum(axis=-1)

    return np.sqrt(np.maximum((kl(pa) + kl(pb)) / 2, 0.0))


def _wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """Wasserstein-1 between two samples, normed by the first one's standard deviation."""
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid[:-1], side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid[:-1], side="right") / len(b)
    return float(np.abs(fa - fb) @ np.diff(grid) / max(float(np.std(a)), 1e-3))


def scores(ref: Features, win: Features) -> dict[str, float]:
    """Every signal's statistic for one window against the reference."""
    out = {name: float(_mmd(ref.vectors[name].sum(0), (ref.vectors[name] ** 2).sum(), len(ref),
                            win.vectors[name].sum(0), (win.vectors[name] ** 2).sum(), len(win)))
           for name in VECTORS}
    out["label"] = float(_js(ref.labels.mean(0), win.labels.mean(0)))
    return out | {name: _wasserstein(ref.scalars[name], win.scalars[name]) for name in SCALARS}


def _null_chunk(ref: Features, za: np.ndarray, zb: np.ndarray) -> dict[str, np.ndarray]:
    """The statistics of many splits at once: za / zb mark each split's pseudo-reference / pseudo-window rows."""
    na, nb = int(za[0].sum()), int(zb[0].sum())
    out = {}
    for name in VECTORS:
        x = ref.vectors[name]
        sq = (x**2).sum(axis=1)
        out[name] = _mmd(za @ x, za @ sq, na, zb @ x, zb @ sq, nb)
    out["label"] = _js(za @ ref.labels / na, zb @ ref.labels / nb)
    for name in SCALARS:
        order = np.argsort(ref.scalars[name], kind="stable")
        values = ref.scalars[name][order]
        a, b = za[:, order], zb[:, order]
        gaps = np.diff(values)
        dist = np.abs(np.cumsum(a[:, :-1], axis=1) / na - np.cumsum(b[:, :-1], axis=1) / nb) @ gaps
        std = np.sqrt(np.maximum(a @ values**2 / na - (a @ values / na) ** 2, 0.0))
        out[name] = dist / np.maximum(std, 1e-3)
    return out


@dataclass
class Calibration:
    """The null of every signal for one window size, and the cutoff for the whole check."""

    window: int          # rows of each pseudo-window
    reference: int       # rows of each pseudo-reference
    draws: int
    false_alarm_rate: float
    cutoff: float        # a signal drifts at p ≤ cutoff
    nulls: dict[str, np.ndarray] = field(repr=False)  # sorted ascending
    seconds: float = 0.0

    def p_value(self, name: str, score: float) -> float:
        null = self.nulls[name]
        return (1 + len(null) - int(np.searchsorted(null, score, side="left"))) / (len(null) + 1)

    def threshold(self, name: str) -> float:
        """The score above which the signal drifts (exactly when its p-value ≤ the cutoff)."""
        null = self.nulls[name]
        allowed = math.floor(self.cutoff * (len(null) + 1) + 1e-9) - 1  # null values a drifted score may not exceed
        return float(null[-1] if allowed < 0 else null[len(null) - 1 - allowed])

    def drifted(self, name: str, score: float) -> bool:
        return self.p_value(name, score) <= self.cutoff

    def as_json(self) -> dict[str, Any]:
        return {"window": self.window, "reference": self.reference, "draws": self.draws,
                "false_alarm_rate": self.false_alarm_rate, "cutoff": self.cutoff, "seconds": self.seconds,
                "nulls": {k: v.tolist() for k, v in self.nulls.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        return cls(**(data | {"nulls": {k: np.asarray(v, np.float64) for k, v in data["nulls"].items()}}))

    def summary(self) -> dict[str, Any]:
        """What a check row stores about the calibration it was judged by."""
        return {"false_alarm_rate": self.false_alarm_rate, "cutoff": self.cutoff, "draws": self.draws,
                "null_window": self.window, "null_reference": self.reference, "signals": len(self.nulls)}


def split_sizes(rows: int, window: int) -> tuple[int, int]:
    """(pseudo-window, pseudo-reference) rows for a null drawn from ``rows`` reference rows."""
    w = max(2, min(window, rows // 2))
    return w, rows - w


def calibrate(ref: Features, *, window: int, false_alarm_rate: float, draws: int, seed: int = 0) -> Calibration:
    """Draw the null of every signal from splits of the reference, and the cutoff for the rate."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    w, n = split_sizes(len(ref), window)
    parts: list[dict[str, np.ndarray]] = []
    for done in range(0, draws, _CHUNK):
        k = min(_CHUNK, draws - done)
        order = np.argsort(rng.random((k, len(ref))), axis=1)
        zb = np.zeros((k, len(ref)))
        za = np.zeros((k, len(ref)))
        np.put_along_axis(zb, order[:, :w], 1.0, axis=1)
        np.put_along_axis(za, order[:, w:w + n], 1.0, axis=1)
        parts.append(_null_chunk(ref, za, zb))
    nulls = {name: np.concatenate([p[name] for p in parts]) for name in SIGNALS}
    cutoff = min_p_cutoff(nulls, false_alarm_rate)
    return Calibration(w, n, draws, false_alarm_rate, cutoff, {k: np.sort(v) for k, v in nulls.items()},
                       round(time.perf_counter() - start, 3))


def min_p_cutoff(nulls: dict[str, np.ndarray], rate: float) -> float:
    """The largest p-value level at which at most ``rate`` of the null splits have any signal at or under it."""
    draws = len(next(iter(nulls.values())))
    ps = []
    for v in nulls.values():  # each split's p-value under the others: (1 + #other values ≥ it) / (draws + 1)
        ps.append((1 + draws - np.searchsorted(np.sort(v), v, side="left") - 1) / (draws + 1))
    min_p = np.sort(np.min(ps, axis=0))
    levels = np.unique(min_p)
    share = np.searchsorted(min_p, levels, side="right") / draws
    allowed = levels[share <= rate]
    return float(allowed.max()) if len(allowed) else 1.0 / (draws + 1)


def judge(evidently: list[Signal], scored: dict[str, float], calibration: Calibration, fixed: set[str]) -> list[Signal]:
    """Each signal as a check reports it: its calibrated statistic, p-value and threshold with Evidently's
    score beside them — or, when ``fixed`` names it (drift.thresholds / drift.methods), Evidently's score
    against the configured threshold, as before calibration."""
    out = []
    for s in evidently:
        if s.name in fixed:
            out.append(s)
            continue
        score = scored[s.name]
        out.append(Signal(s.name, METHODS[s.name], score, calibration.threshold(s.name),
                          calibration.drifted(s.name, score), calibration.p_value(s.name, score), True, s.score))
    return out
