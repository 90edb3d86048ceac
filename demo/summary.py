"""What ``refitd demo`` prints and keeps at the end: the summary table, the label-free estimate's error
over the checks, the plots, ``summary.json`` and ``answers.csv``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from refitd.demo import plots


def report(summary: dict[str, Any], answers: pd.DataFrame, *, out: Path, console: Console) -> None:
    """Print the summary (live accuracy per phase and version, drift checks, the estimate's error, the refit),
    draw the plots and write ``summary.json`` and ``answers.csv`` into ``out``."""
    console.rule("5. summary")
    table = Table(title="live traffic per phase and served version (accuracy on the answers whose label was posted)")
    for c in ("phase", "served by", "requests", "labelled", "accuracy"):
        table.add_column(c)
    for g in summary["groups"]:
        table.add_row(str(g["phase"]), g["version"], str(g["requests"]), str(g["labelled"]),
                      "-" if g["accuracy"] is None else f"{g['accuracy']:.3f}")
    console.print(table)
    for ph in ("1", "2"):
        cs = summary["drift"][ph]
        drifted = [c for c in cs if c["verdict"] == "drifted"]
        console.print(f"phase {ph}: {len(cs)} drift checks, {len(drifted)} drifted"
                           + (f"; first: {drifted[0]['reason']}" if drifted else ""))
    if summary["after_promotion"]:
        console.print(f"checks after the promotion: {', '.join(summary['after_promotion'])}")
    e = summary["estimate"]
    if e["checks"]:
        console.print(f"label-free accuracy estimate vs measured, over {e['checks']} checks with labels: "
                           f"mean absolute error {e['mae']:.3f} (largest {e['max']:.3f}, mean {e['bias']:+.3f}); an "
                           f"exact estimate would still show about {e['label_noise']:.3f} from the labels' sampling "
                           f"noise alone; the estimate's own RMS error, that noise taken out, {e['estimate_rms']:.3f}")
    r = summary["refit"]
    if r:
        console.print(f"refit ({r['trigger']}) started at {r['started_at_s']:.0f} s, took "
                           f"{r['duration_s'] or 0:.0f} s: {r['verdict'] or r['status']} — {r['reason']}")
    else:
        console.print("[yellow]no refit ran[/]")
    if summary["promotions"]:
        at, version = summary["promotions"][0]
        console.print(f"from the shift to {version} serving: {at - summary['phase2_at_s']:.0f} s")
    drifted_at = [c["at"] for c in summary["checks"] if c["verdict"] == "drifted"]
    acc_png = plots.live_accuracy(answers, phase2_at=summary["phase2_at_s"], promotions=summary["promotions"],
                                  drifted_at=drifted_at, path=out / "live_accuracy.png")
    sig_png = plots.drift_signals(summary["checks"], phase2_at=summary["phase2_at_s"],
                                  promotions=summary["promotions"], path=out / "drift_signals.png")
    summary["plots"] = [str(acc_png), str(sig_png)]
    summary["reports"] = [c["report"] for c in summary["checks"] if c["report"]]
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    answers.to_csv(out / "answers.csv", index=False)
    console.print(f"plots: {acc_png}, {sig_png}")
    if summary["reports"]:
        console.print(f"{len(summary['reports'])} HTML drift reports, e.g. {summary['reports'][-1]}")
    console.print(f"summary: {out / 'summary.json'}")


def estimate_error(checks: list[dict[str, Any]]) -> dict[str, Any]:
    """How far the label-free estimate was from measured accuracy, over the checks that had enough labels:
    mean absolute and largest error and the mean signed error (its bias); and how much of it the labels
    make. Measured accuracy on n labelled rows is itself a sample: off from what those rows would score on
    average by about sqrt(2 / pi) * sqrt(p (1 - p) / n) (normal approximation; an upper bound, since rows
    differ in difficulty), so even an exact estimate would show that much (``label_noise``). Taking that
    variance out of the mean squared error leaves the estimate's own RMS error (``estimate_rms``)."""
    perf = [p for c in checks if (p := (c["signals"] or {}).get("_performance") or {}).get("estimate_error") is not None]
    errors = [p["estimate_error"] for p in perf]
    variances = [p["measured_accuracy"] * (1 - p["measured_accuracy"]) / p["labelled"]
                 for p in perf if p.get("labelled") and p.get("measured_accuracy") is not None]
    if not errors:
        return {"checks": 0, "mae": None, "max": None, "bias": None, "label_noise": None, "estimate_rms": None}
    mean_variance = sum(variances) / len(variances) if variances else 0.0
    return {"checks": len(errors), "mae": sum(map(abs, errors)) / len(errors), "max": max(map(abs, errors)),
            "bias": sum(errors) / len(errors),
            "label_noise": sum(math.sqrt(2 / math.pi * v) for v in variances) / len(variances) if variances else 0.0,
            "estimate_rms": math.sqrt(max(0.0, sum(e * e for e in errors) / len(errors) - mean_variance))}
