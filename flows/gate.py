"""The promotion gate: a candidate replaces the champion only if it is better where it matters.

Pure functions of the metrics, so every rule is unit-tested and every verdict
carries a sentence a human can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


_EPS = 1e-9  # metric arithmetic in floats: a gap "equal" to a limit counts as within it


@dataclass(frozen=True)
class GateRules:
    primary_metric: str = "macro_f1"
    min_delta: float = 0.01
    max_regression: float = 0.02
    baseline_margin: float = 0.05
    int8_tolerance: float = 0.005
    confidence: float = 0.9
    min_recent_rows: int = 30


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str
    serve_int8: bool
    int8_reason: str


def _m(report: dict[str, Any] | None, metric: str) -> float | None:
    return None if not report or not report.get("n") else float(report[metric])


def decide(candidate: dict[str, Any], champion: dict[str, Any] | None, rules: GateRules,
           paired: dict[str, Any] | None = None, label_change: str | None = None) -> Verdict:
    """``candidate`` / ``champion``: {"frozen": report, "recent": report|None, "baseline": report, "frozen_int8",
    "recent_int8", "int8_export": the export's INT8 choice (optional; see :func:`choose_int8`)};
    ``paired``: {"frozen", "recent"} → :func:`paired_bootstrap` of candidate minus champion on those rows.

    With intervals, a difference counts only at ``rules.confidence``: promotion needs the recent
    difference's lower bound to reach ``min_delta``, and the frozen difference's lower bound must not
    pass ``-max_regression`` (non-inferiority). Without them (older callers), the point estimates decide.

    ``label_change`` (the label sets, in words) when the candidate answers another label set than the champion
    on purpose (`refitd data replace --new-label-set`): the champion cannot answer the new frozen set, and the
    recent labels were given in its labels, so "better than the champion" means nothing on either. The candidate
    is judged as a first model is, against the majority baseline on the frozen set, and on the recent set (the
    classes both answer) it must not fall more than ``max_regression`` below the champion.
    """
    metric = rules.primary_metric
    int8_ok, int8_reason = int8_verdict(candidate, rules.int8_tolerance)
    cand_frozen = _m(candidate["frozen"], metric)
    if champion is None:
        base = _m(candidate["baseline"], metric)
        needed = (base or 0.0) + rules.baseline_margin
        ok = cand_frozen is not None and cand_frozen + _EPS >= needed
        word = "promoted" if ok else "rejected"
        return Verdict(ok, f"{word}: {metric} on frozen {cand_frozen:.3f} vs majority baseline {base:.3f} "
                           f"(needs +{rules.baseline_margin:.3f}; no champion yet)", int8_ok, int8_reason)
    paired = paired or {}
    if label_change is not None:
        return _new_label_set(candidate, champion, rules, paired, label_change, int8_ok, int8_reason)
    champ_frozen = _m(champion["frozen"], metric)
    cand_recent, champ_recent = _m(candidate.get("recent"), metric), _m(champion.get("recent"), metric)
    frozen_gap, recent_gap = _gap(paired.get("frozen"), cand_frozen, champ_frozen), \
        _gap(paired.get("recent"), cand_recent, champ_recent)
    frozen_says = f"frozen {cand_frozen:.3f} vs champion {champ_frozen:.3f}{_says(paired.get('frozen'))}"
    recent_n = int((candidate.get("recent") or {}).get("n") or 0)
    if cand_recent is None or champ_recent is None or recent_n < rules.min_recent_rows:
        # No new labelled data to test on, or too little to tell: the frozen set must show the improvement itself.
        why = "no recent test set" if cand_recent is None or champ_recent is None else \
            f"the recent test set's {recent_n} rows are under gate.min_recent_rows {rules.min_recent_rows}"
        ok = frozen_gap + _EPS >= rules.min_delta
        word = "promoted" if ok else "rejected"
        return Verdict(ok, f"{word}: {metric} on {frozen_says} (needs +{rules.min_delta:.3f}; {why})",
                       int8_ok, int8_reason)
    recent_says = f"recent {cand_recent:.3f} vs champion {champ_recent:.3f}{_says(paired.get('recent'))}"
    if recent_gap + _EPS < rules.min_delta:
        return Verdict(False, f"rejected: {metric} on {recent_says} (needs +{rules.min_delta:.3f})", int8_ok, int8_reason)
    if frozen_gap + _EPS < -rules.max_regression:
        return Verdict(False, f"rejected: {metric} on {frozen_says} may regress more than {rules.max_regression:.3f} "
                              f"({recent_says} was better){_too_few(paired.get('frozen'), rules)}",
                       int8_ok, int8_reason)
    return Verdict(True, f"promoted: {metric} on {recent_says} (≥ +{rules.min_delta:.3f}); {frozen_says} "
                         f"(regression limit {rules.max_regression:.3f})", int8_ok, int8_reason)


def _new_label_set(candidate: dict[str, Any], champion: dict[str, Any], rules: GateRules, paired: dict[str, Any],
                   label_change: str, int8_ok: bool, int8_reason: str) -> Verdict:
    metric = rules.primary_metric
    cand_frozen, base = _m(candidate["frozen"], metric), _m(candidate["baseline"], metric)
    needed = (base or 0.0) + rules.baseline_margin
    frozen_says = (f"{metric} on frozen {cand_frozen:.3f} vs majority baseline {base:.3f} (needs "
                   f"+{rules.baseline_margin:.3f}, as a first model does)")
    if cand_frozen is None or cand_frozen + _EPS < needed:
        return Verdict(False, f"rejected: a new label set ({label_change}): {frozen_says}", int8_ok, int8_reason)
    cand_recent, champ_recent = _m(candidate.get("recent"), metric), _m(champion.get("recent"), metric)
    recent_n = int((candidate.get("recent") or {}).get("n") or 0)
    if cand_recent is None or champ_recent is None or recent_n < rules.min_recent_rows:
        recent_says = "no recent test set large enough to compare on"
    else:
        recent_says = f"recent {cand_recent:.3f} vs champion {champ_recent:.3f}{_says(paired.get('recent'))}"
        if _gap(paired.get("recent"), cand_recent, champ_recent) + _EPS < -rules.max_regression:
            return Verdict(False, f"rejected: a new label set ({label_change}): {metric} on {recent_says} may regress "
                                  f"more than {rules.max_regression:.3f} on the classes both answer", int8_ok, int8_reason)
        recent_says += f" (regression limit {rules.max_regression:.3f}, the classes both answer)"
    return Verdict(True, f"promoted: a new label set ({label_change}): {frozen_says}; {recent_says}", int8_ok,
                   int8_reason)


def _gap(paired: dict[str, Any] | None, candidate: float | None, champion: float | None) -> float:
    """The difference the rules read: the interval's lower bound when there is one, else the point estimate."""
    if paired is not None:
        return float(paired["lower"])
    return (candidate or 0.0) - (champion or 0.0)


def _too_few(paired: dict[str, Any] | None, rules: GateRules) -> str:
    """When the point difference is within the regression limit and only the interval's width rejects: say that
    the set is what decides, and what would let such a candidate through."""
    if paired is None or paired["delta"] + _EPS < -rules.max_regression:
        return ""
    return (f"; the point difference is within the limit, but {paired['n']} frozen rows cannot rule the regression out "
            f"at {paired['confidence']:.0%}: a larger frozen test set (training.test_fraction, more data) or a lower "
            "gate.confidence would decide such a candidate")


def _says(paired: dict[str, Any] | None) -> str:
    return f", difference {_interval(paired)}" if paired is not None else ""


def choose_int8(fp32: dict[str, Any], variants: dict[str, dict[str, Any]],
                tolerance: float) -> tuple[str | None, dict[str, str]]:
    """The INT8 variant to keep: the fastest (``speedup`` over fp32) whose validation ``accuracy`` is within
    ``tolerance`` of fp32's and that is faster than fp32 at all; None = serve fp32. With a reason per variant."""
    why: dict[str, str] = {}
    eligible = []
    for name, v in variants.items():
        gap = fp32["accuracy"] - v["accuracy"]
        if gap > tolerance + _EPS:
            why[name] = f"accuracy {v['accuracy']:.4f} vs fp32 {fp32['accuracy']:.4f}: {gap:.4f} beyond {tolerance:.4f}"
        elif v["speedup"] <= 1.0:
            why[name] = f"within tolerance but not faster than fp32 ({v['speedup']:.2f}×)"
        else:
            eligible.append(name)
    chosen = max(eligible, key=lambda n: variants[n]["speedup"], default=None)
    for name in eligible:
        v = variants[name]
        why[name] = (f"chosen: fastest within {tolerance:.4f} of fp32" if name == chosen else
                     f"within tolerance but slower than {chosen}") + \
            f" ({v['speedup']:.2f}× fp32, accuracy {v['accuracy']:.4f} vs {fp32['accuracy']:.4f})"
    return chosen, why


def int8_verdict(candidate: dict[str, Any], tolerance: float) -> tuple[bool, str]:
    """INT8 is served only if export chose a variant (``int8_export``) and no evaluated set shows it more than
    ``tolerance`` below fp32's accuracy.

    With ``int8_paired`` (per set, :func:`paired_bootstrap` of INT8 minus fp32 on the same rows) a set counts
    against INT8 only when the interval's upper bound is below ``-tolerance``: on a few hundred recent rows one
    row is 0.3 points, and a 2-row gap with 7 disagreements is noise, not a loss. A point gap of more than
    twice ``tolerance`` refuses INT8 even where the interval is too wide to show it. Without intervals (older
    callers) the point gap decides."""
    export = candidate.get("int8_export")
    if export is not None and export.get("chosen") is None:
        return False, f"fp32 served: {export['reason']}"
    paired = candidate.get("int8_paired") or {}
    gaps = []
    for name in ("frozen", "recent"):
        fp32, int8 = _m(candidate.get(name), "accuracy"), _m(candidate.get(f"{name}_int8"), "accuracy")
        if fp32 is not None and int8 is not None:
            # the loss the rules read: the smallest the interval allows, else the point gap; a point gap past
            # twice the tolerance refuses INT8 whatever the interval (a small set's wide interval is no pass)
            point = fp32 - int8
            loss = -float(paired[name]["upper"]) if name in paired and point <= 2 * tolerance + _EPS else point
            gaps.append((name, fp32, int8, loss))
    if not gaps:
        return False, "fp32 served: INT8 was not evaluated"
    worst = max(gaps, key=lambda g: g[3])
    detail = "; ".join(f"{n} {i:.3f} vs {f:.3f}" + (f" (Δ {paired[n]['delta']:+.4f}, upper {paired[n]['upper']:+.4f} at "
                                                    f"{paired[n]['confidence']:.0%})" if n in paired else "")
                       for n, f, i, _ in gaps)
    if worst[3] <= tolerance + _EPS:
        if paired:
            return True, f"INT8 served: no test set shows it more than {tolerance:.3f} below fp32 ({detail})"
        return True, f"INT8 served: accuracy within {tolerance:.3f} of fp32 ({detail})"
    return False, (f"fp32 served: INT8 accuracy on {worst[0]} {worst[2]:.3f} vs fp32 {worst[1]:.3f} beyond {tolerance:.3f}"
                   + (f" ({detail})" if paired else ""))


def paired_bootstrap(y_true: list[str], cand: list[str], champ: list[str], labels: list[str], *, metric: str,
                     confidence: float = 0.9, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Candidate minus champion on the same rows, resampled together: the point difference and its
    one-sided bounds at ``confidence`` (``lower``: the difference exceeds it with that probability)."""
    index = {lbl: i for i, lbl in enumerate(labels)}
    unknown = len(labels)  # a champion label the candidate's set lacks counts as wrong, never as a class
    y = np.asarray([index[v] for v in y_true])
    a = np.asarray([index.get(v, unknown) for v in cand])
    b = np.asarray([index.get(v, unknown) for v in champ])
    n, k = len(y), len(labels) + 1
    rng, deltas = np.random.default_rng(seed), []
    for start in range(0, resamples, 200):  # in chunks: a 20k-row frozen set stays in tens of MB
        rows = rng.integers(0, n, size=(min(200, resamples - start), n))
        deltas.append(_metric(y[rows], a[rows], k, metric) - _metric(y[rows], b[rows], k, metric))
    deltas = np.concatenate(deltas)
    point = float(_metric(y[None], a[None], k, metric)[0] - _metric(y[None], b[None], k, metric)[0])
    return {"metric": metric, "n": int(n), "delta": point, "confidence": confidence, "resamples": resamples,
            "lower": float(np.quantile(deltas, 1 - confidence)), "upper": float(np.quantile(deltas, confidence))}


def _metric(y: np.ndarray, p: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Accuracy or macro-F1 (over the real labels, zero when undefined) of each row of (y, p)."""
    if metric == "accuracy":
        return (y == p).mean(axis=1)
    offsets = (np.arange(len(y)) * k * k)[:, None]
    confusion = np.bincount((offsets + y * k + p).ravel(), minlength=len(y) * k * k).reshape(len(y), k, k)
    tp = np.diagonal(confusion, axis1=1, axis2=2)[:, : k - 1]
    true, pred = confusion.sum(axis=2)[:, : k - 1], confusion.sum(axis=1)[:, : k - 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(true + pred > 0, 2 * tp / (true + pred), 0.0)
    return f1.mean(axis=1)


def _interval(p: dict[str, Any]) -> str:
    return f"{p['delta']:+.3f} [{p['lower']:+.3f}, {p['upper']:+.3f}] at {p['confidence']:.0%}, n={p['n']}"
