"""Drift signals on a window of production traffic against the champion's reference data, as Evidently scores them.

Signals (each an Evidently metric of the check's report):
- text: Evidently's text content drift (a domain classifier's ROC AUC);
- embedding: drift of the served model's pooled embeddings (Evidently's ``model()`` embedding method);
- label / confidence: predicted-label and max-probability distribution drift (Evidently ValueDrift);
- descriptors: length, out-of-vocabulary share and non-letter share (Evidently ValueDrift).

By default a check judges every signal by a calibrated statistic and threshold instead
(``calibration``); these fixed thresholds judge a signal named in ``drift.thresholds`` or
``drift.methods``, and every signal when ``drift.calibrated`` is false (the rule before calibration:
``min_drifted_signals`` of them over their thresholds). Normed Wasserstein at 0.1 flagged clean 300-row
airline windows, so the distribution signals start at 0.2.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

WORD = re.compile(r"[a-z']+")


@dataclass(frozen=True)
class SignalSpec:
    name: str
    column: str
    method: str
    threshold: float
    higher_is_drift: bool = True  # distances / AUCs: drift above; p-values: drift below


@dataclass
class Signal:
    name: str
    method: str
    score: float
    threshold: float
    drifted: bool
    p_value: float | None = None  # under the signal's calibrated null (performance: a binomial test)
    calibrated: bool = False  # threshold from the reference's null at drift.false_alarm_rate, not a fixed number
    evidently_score: float | None = None  # Evidently's own score for the signal, beside a calibrated statistic

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_SPECS = (
    SignalSpec("text", "text", "abs_text_content_drift", 0.55),
    SignalSpec("label", "label", "jensenshannon", 0.1),
    SignalSpec("confidence", "confidence", "wasserstein", 0.2),
    SignalSpec("length", "length", "wasserstein", 0.2),
    SignalSpec("oov_share", "oov_share", "wasserstein", 0.2),
    SignalSpec("non_letter_share", "non_letter_share", "wasserstein", 0.2),
)


def specs_from(methods: dict[str, str], thresholds: dict[str, float]) -> tuple[SignalSpec, ...]:
    """The default signals with the configured method and threshold overrides applied."""
    from dataclasses import replace

    out = []
    for spec in DEFAULT_SPECS:
        method = methods.get(spec.name, spec.method)
        # p-value tests (ks, chisquare, …) flag drift *below* their threshold; distances and AUCs above it.
        higher = method not in P_VALUE_METHODS
        default = spec.threshold if method == spec.method else (0.05 if not higher else spec.threshold)
        out.append(replace(spec, method=method, threshold=thresholds.get(spec.name, default), higher_is_drift=higher))
    return tuple(out)


P_VALUE_METHODS = {"ks", "chisquare", "z", "fisher_exact", "g_test", "mannw", "t_test", "anderson", "cramer_von_mises",
                   "epps_singleton", "empirical_mmd"}


def vocabulary(texts: pd.Series) -> set[str]:
    return {w for t in texts for w in WORD.findall(t.lower())}


def add_descriptors(frame: pd.DataFrame, vocab: set[str]) -> pd.DataFrame:
    """Length in characters, share of words outside the reference vocabulary, share of non-letters."""
    def oov(text: str) -> float:
        words = WORD.findall(text.lower())
        return sum(w not in vocab for w in words) / len(words) if words else 1.0

    def non_letters(text: str) -> float:
        return sum(not (c.isalpha() or c.isspace()) for c in text) / max(1, len(text))

    return frame.assign(length=frame["text"].str.len().astype(float), oov_share=frame["text"].map(oov),
                        non_letter_share=frame["text"].map(non_letters))


def value_drift_report(reference: pd.DataFrame, current: pd.DataFrame, specs=DEFAULT_SPECS):  # type: ignore[no-untyped-def]
    """Run one Evidently Report with a ValueDrift per signal; return (snapshot, signals)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    definition = DataDefinition(
        text_columns=["text"], categorical_columns=["label"],
        numerical_columns=["confidence", "length", "oov_share", "non_letter_share"],
    )
    columns = ["text", "label", "confidence", "length", "oov_share", "non_letter_share"]
    report = Report([ValueDrift(column=s.column, method=s.method, threshold=s.threshold) for s in specs])
    snapshot = report.run(Dataset.from_pandas(current[columns], data_definition=definition),
                          Dataset.from_pandas(reference[columns], data_definition=definition))
    values = [float(m["value"]) for m in snapshot.dict()["metrics"]]
    signals = [Signal(s.name, s.method, v, s.threshold, v > s.threshold if s.higher_is_drift else v < s.threshold)
               for s, v in zip(specs, values, strict=True)]
    return snapshot, signals


def embedding_signal(reference: np.ndarray, current: np.ndarray, *, threshold: float = 0.55, seed: int = 0) -> Signal:
    """Evidently's ``model()`` embedding drift: a classifier told to separate the two windows (ROC AUC)."""
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model

    cols = [f"e{i}" for i in range(reference.shape[1])]
    method = model(threshold=threshold, bootstrap=False)
    score, drifted, name = method(pd.DataFrame(current, columns=cols), pd.DataFrame(reference, columns=cols))
    return Signal("embedding", f"{name}", float(score), threshold, bool(drifted))


def verdict(signals: list[Signal], *, window: int, min_window: int, min_drifted: int = 2) -> tuple[str, str]:
    """The fixed-threshold rule: drifted / not_drifted / insufficient_data, with the reason in words."""
    if window < min_window:
        return "insufficient_data", f"window has {window} predictions; a check needs at least {min_window}"
    drifted = [s for s in signals if s.drifted]
    names = ", ".join(f"{s.name} {s.score:.3f} {'<' if s.method in P_VALUE_METHODS else '>'} {s.threshold:g}"
                      for s in drifted) or "none"
    if len(drifted) >= min_drifted:
        return "drifted", f"{len(drifted)} signals drifted (needs {min_drifted}): {names}"
    return "not_drifted", f"{len(drifted)} signals drifted (needs {min_drifted}): {names}"


def calibrated_verdict(signals: list[Signal], *, cutoff: float, rate: float) -> tuple[str, str]:
    """drifted when any signal is over its threshold: a calibrated one at p ≤ ``cutoff`` (the level that
    holds all of them together to ``rate`` per check), a fixed one over its configured threshold."""
    calibrated = [s for s in signals if s.calibrated]
    rule = (f"{len(calibrated)} calibrated signals at a {rate * 100:g}% false-alarm rate per check "
            f"(each drifts at p ≤ {cutoff:.2g})")
    drifted = [s for s in signals if s.drifted]
    if drifted:
        return "drifted", f"{', '.join(_over(s) for s in drifted)}; {rule}"
    if not calibrated:
        return "not_drifted", "no signal over its fixed threshold"
    low = min(calibrated, key=lambda s: s.p_value if s.p_value is not None else 1.0)
    return "not_drifted", f"no signal drifted; lowest p {low.p_value:.2g} ({low.name}); {rule}"


def _over(s: Signal) -> str:
    """A drifted signal in words: score against threshold, and its p-value when it has one."""
    side = "<" if s.method in P_VALUE_METHODS else ">"
    p = f" (p {s.p_value:.2g})" if s.p_value is not None else ""
    fixed = "" if s.calibrated else " fixed"
    return f"{s.name} {s.score:.3g} {side}{fixed} {s.threshold:.3g}{p}"
