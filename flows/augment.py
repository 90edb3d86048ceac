"""Text augmentation for small data: random deletion, swap and insertion (no external lexicon).

Insertion draws from the training texts' own vocabulary, so nothing is downloaded
and no word is foreign to the data.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import pandas as pd

from refitd.core.datasets import normalise


def _words(text: str) -> list[str]:
    return text.split()


def random_deletion(words: list[str], p: float, rng: random.Random) -> list[str]:
    kept = [w for w in words if rng.random() > p]
    return kept or [rng.choice(words)]


def random_swap(words: list[str], n: int, rng: random.Random) -> list[str]:
    words = list(words)
    for _ in range(n):
        if len(words) < 2:
            break
        i, j = rng.sample(range(len(words)), 2)
        words[i], words[j] = words[j], words[i]
    return words


def random_insertion(words: list[str], n: int, vocabulary: list[str], rng: random.Random) -> list[str]:
    words = list(words)
    for _ in range(n):
        words.insert(rng.randint(0, len(words)), rng.choice(vocabulary))
    return words


def augment_frame(frame: pd.DataFrame, *, copies: int, seed: int, p: float = 0.1,
                  exclude: Iterable[str] = ()) -> pd.DataFrame:
    """The original rows plus ``copies`` augmented variants of each (labels kept, ``augmented`` marked). A variant
    that normalises to a text in ``exclude`` (the held-out sets: a deleted word can turn a training tweet into
    a test one) or to a text already in training is dropped: it would train on a held-out row, or twice on one."""
    rng = random.Random(seed)
    taken = {normalise(t) for t in frame["text"]} | {normalise(t) for t in exclude}
    vocabulary = sorted({w for t in frame["text"] for w in _words(t) if w.isalpha() and len(w) > 2}) or ["the"]
    extra = []
    for text, label in zip(frame["text"], frame["label"], strict=True):
        words = _words(text)
        if len(words) < 2:
            continue
        for _ in range(copies):
            n = max(1, int(p * len(words)))
            op = rng.choice((lambda w: random_deletion(w, p, rng), lambda w: random_swap(w, n, rng),
                             lambda w: random_insertion(w, n, vocabulary, rng)))
            variant = " ".join(op(words))
            key = normalise(variant)
            if key not in taken:
                taken.add(key)
                extra.append({"text": variant, "label": label, "augmented": True})
    out = frame.assign(augmented=False)
    return pd.concat([out, pd.DataFrame(extra, columns=["text", "label", "augmented"])], ignore_index=True)
