"""``python -m refitd.bench estimate --home <a home whose daemon ran checks>``: the label-free accuracy estimate's
error over the checks a home recorded, replayed with each way of setting its ATC threshold.

For every stored check with labels: the champion's answers in its window that had a label by the time of the check
(the rows the check measured), and the champion's labelled answers served before the window, labelled by then too.
Only checks that made an estimate count (not those short of ``drift.min_window`` rows). The baseline is the
threshold the champion's refit stored (the mean confidence for a version trained before it was stored); the
alternatives set it again on the latest N of those earlier answers, N = ``--history`` (the check's rule with its
default N, ``ESTIMATE_HISTORY_ROWS``, among them), falling back to the stored one below ``ATC_MIN_ROWS``. Reported per way: the mean absolute error against measured
accuracy, its mean (bias) and its largest, and the labels' own share of the error (an exact estimate would still be
off by about √(2/π)·√(p(1−p)/n) on n labelled rows). Reads the database only; nothing is scored again.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from refitd.bench.report import save
from refitd.core import registry
from refitd.core.db import engine_for, session_scope
from refitd.core.estimate import ATC_MIN_ROWS, atc_threshold
from refitd.core.settings import Settings
from refitd.core.tables import DriftCheck, Feedback, ModelVersion, Prediction
from refitd.daemon.drift.check import ESTIMATE_HISTORY_ROWS


def _answers(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float | None]]:
    engine = engine_for(settings)
    with session_scope(engine) as session:
        checks = pd.DataFrame(session.execute(select(
            DriftCheck.id, DriftCheck.created_at, DriftCheck.model_version, DriftCheck.window_start,
            DriftCheck.window_end).where(DriftCheck.verdict != "insufficient_data")  # no estimate was made
            .order_by(DriftCheck.id)).all(), columns=["id", "at", "version", "start", "end"])
        answers = pd.DataFrame(session.execute(select(
            Prediction.created_at, Prediction.model_version, Prediction.label, Prediction.confidence,
            Feedback.label, Feedback.created_at).join(Feedback, Feedback.prediction_id == Prediction.id)).all(),
            columns=["created_at", "version", "label", "confidence", "true_label", "labelled_at"])
        thresholds = {mv.version: registry.atc_threshold(mv) for mv in session.scalars(select(ModelVersion))}
    return checks, answers, thresholds


def run(home: Path, *, history: list[int]) -> dict[str, Any]:
    settings = Settings.load(home=home)
    checks, answers, thresholds = _answers(settings)
    ways = ["stored"] + [f"latest {n}" for n in history]
    errors: dict[str, list[float]] = {way: [] for way in ways}
    per_check, noise = [], []
    for check in checks.itertuples():
        if pd.isna(check.start):
            continue
        known = answers[(answers.version == check.version) & (answers.labelled_at <= check.at)]
        window = known[(known.created_at >= check.start) & (known.created_at <= check.end)]
        if len(window) < settings.drift.min_labels:
            continue
        measured = float((window.label == window.true_label).mean())
        before = known[known.created_at < check.start].sort_values("created_at", ascending=False)
        row: dict[str, Any] = {"check": int(check.id), "version": check.version, "labelled": len(window),
                               "measured": measured}
        for way, n in zip(ways, [0, *history], strict=True):
            cal = before.head(n)
            threshold = thresholds.get(check.version) if len(cal) < max(ATC_MIN_ROWS, 1) or not n else atc_threshold(
                cal.confidence.to_numpy(dtype=float), (cal.label == cal.true_label).to_numpy())
            # as the check does: without a stored threshold (a version older than it), the mean confidence
            estimate = window.confidence.mean() if threshold is None else (window.confidence > threshold).mean()
            row[way] = float(estimate) - measured
            errors[way].append(row[way])
        noise.append(float(np.sqrt(2 / np.pi) * np.sqrt(measured * (1 - measured) / len(window))))
        per_check.append(row)
    summary = {way: {"mae": statistics.fmean(abs(e) for e in errs), "bias": statistics.fmean(errs),
                     "largest": max(abs(e) for e in errs)} if errs else None for way, errs in errors.items()}
    return {"home": str(home), "checks": len(per_check), "history": history, "default": ESTIMATE_HISTORY_ROWS,
            "labels_noise": statistics.fmean(noise) if noise else None, "ways": summary, "per_check": per_check}


def render(r: dict[str, Any]) -> str:
    lines = [f"bench estimate: {r['checks']} checks with labels in {r['home']}; the labels' own noise alone "
             f"≈ {r['labels_noise'] or 0:.3f}", "| threshold set on | mean abs error | mean | largest |",
             "|---|---:|---:|---:|"]
    for way, s in r["ways"].items():
        name = way + (" (the check's default)" if way == "latest " + str(r["default"]) else "")
        lines.append(f"| {name} | " + (" | ".join(f"{s[k]:+.3f}" if k == "bias" else f"{s[k]:.3f}"
                                                   for k in ("mae", "bias", "largest")) if s else "- | - | -") + " |")
    return "\n".join(lines)


def ratios(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    stored, default = r["ways"].get("stored"), r["ways"].get(f"latest {r['default']}")
    value = f"{default['mae']:.3f} vs {stored['mae']:.3f}" if stored and default else "no checks with labels"
    return [(f"label-free estimate MAE over {r['checks']} checks: latest {r['default']} answers vs stored threshold",
             value, "≤ 0.05")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m refitd.bench estimate", description=__doc__.split("\n\n")[0])
    p.add_argument("--home", type=Path, required=True, help="a state dir whose daemon ran drift checks with labels "
                                                            "(e.g. `refitd demo --keep`'s)")
    p.add_argument("--history", type=int, nargs="+", default=[200, 500, ESTIMATE_HISTORY_ROWS, 2000],
                   help="numbers of earlier labelled answers to set the threshold on")
    args = p.parse_args(argv)
    result = run(args.home, history=args.history)
    save("estimate", result)
    print(render(result))
    return 0
