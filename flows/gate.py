"""The promotion gate: a candidate replaces the champion only if it is better where it matters.

Pure functions of the metrics, so every rule is unit-tested and every verdict
carries a sentence a human can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


_EPS = 1e-9  # metric arithmetic in floats: a gap "equal" to a limit counts as within it


@dataclass(frozen=True)
class GateRules:
    primary_metric: str = "macro_f1"
    min_delta: float = 0.01
    max_regression: float = 0.02
    baseline_margin: float = 0.05
    int8_tolerance: float = 0.01


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str
    serve_int8: bool
    int8_reason: str


def _m(report: dict[str, Any] | None, metric: str) -> float | None:
    return None if not report or not report.get("n") else float(report[metric])


def decide(candidate: dict[str, Any], champion: dict[str, Any] | None, rules: GateRules) -> Verdict:
    """``candidate`` / ``champion``: {"frozen": report, "recent": report|None, "baseline": report, "frozen_int8", "recent_int8"}."""
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
    champ_frozen = _m(champion["frozen"], metric)
    cand_recent, champ_recent = _m(candidate.get("recent"), metric), _m(champion.get("recent"), metric)
    if cand_recent is None or champ_recent is None:
        # No new labelled data to test on: the frozen set must show the improvement itself.
        ok = cand_frozen + _EPS >= champ_frozen + rules.min_delta
        word = "promoted" if ok else "rejected"
        return Verdict(ok, f"{word}: {metric} on frozen {cand_frozen:.3f} vs champion {champ_frozen:.3f} "
                           f"(needs +{rules.min_delta:.3f}; no recent test set)", int8_ok, int8_reason)
    if cand_recent + _EPS < champ_recent + rules.min_delta:
        return Verdict(False, f"rejected: {metric} on recent {cand_recent:.3f} vs champion {champ_recent:.3f} "
                              f"(needs +{rules.min_delta:.3f})", int8_ok, int8_reason)
    if cand_frozen + _EPS < champ_frozen - rules.max_regression:
        return Verdict(False, f"rejected: {metric} on frozen {cand_frozen:.3f} vs champion {champ_frozen:.3f} "
                              f"regresses more than {rules.max_regression:.3f} (recent {cand_recent:.3f} vs "
                              f"{champ_recent:.3f} was better)", int8_ok, int8_reason)
    return Verdict(True, f"promoted: {metric} on recent {cand_recent:.3f} vs champion {champ_recent:.3f} "
                         f"(+{cand_recent - champ_recent:.3f} ≥ {rules.min_delta:.3f}); frozen {cand_frozen:.3f} vs "
                         f"{champ_frozen:.3f} (regression limit {rules.max_regression:.3f})", int8_ok, int8_reason)


def int8_verdict(candidate: dict[str, Any], tolerance: float) -> tuple[bool, str]:
    """INT8 is served only if its accuracy is within ``tolerance`` of fp32 on every evaluated set."""
    gaps = []
    for name in ("frozen", "recent"):
        fp32, int8 = _m(candidate.get(name), "accuracy"), _m(candidate.get(f"{name}_int8"), "accuracy")
        if fp32 is not None and int8 is not None:
            gaps.append((name, fp32, int8))
    if not gaps:
        return False, "fp32 served: INT8 was not evaluated"
    worst = max(gaps, key=lambda g: g[1] - g[2])
    detail = "; ".join(f"{n} {i:.3f} vs {f:.3f}" for n, f, i in gaps)
    if worst[1] - worst[2] <= tolerance + _EPS:
        return True, f"INT8 served: accuracy within {tolerance:.3f} of fp32 ({detail})"
    return False, f"fp32 served: INT8 accuracy on {worst[0]} {worst[2]:.3f} vs fp32 {worst[1]:.3f} beyond {tolerance:.3f}"
