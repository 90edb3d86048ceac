"""The demo's figures as PNG: live accuracy with promotion and drift markers; drift signals against thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def live_accuracy(answers: pd.DataFrame, *, phase2_at: float, promotions: list[tuple[float, str]],
                  drifted_at: list[float], path: Path, window: int = 100) -> Path:
    """Rolling accuracy of the labelled answers over time, per served version's colour, with markers."""
    plt = _pyplot()
    labelled = answers[answers["labelled"]].sort_values("at")
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    for version, part in labelled.groupby("version"):  # each version's own answers: no window mixes two models
        correct = (part["predicted"] == part["truth"]).astype(float)
        acc = correct.rolling(window, min_periods=max(10, window // 4)).mean()
        ax.plot(part["at"], acc, ".", markersize=3, label=f"served by {version}")
    ax.axvspan(phase2_at, float(answers["at"].max()), color="tab:orange", alpha=0.08, label="phase 2: topic shift")
    for i, at in enumerate(drifted_at):
        ax.axvline(at, color="tab:red", linestyle=":", linewidth=1, label="drift check: drifted" if i == 0 else None)
    for at, version in promotions:
        ax.axvline(at, color="tab:green", linewidth=2, label=f"{version} promoted and served")
    ax.set_xlabel("seconds since the stream started")
    ax.set_ylabel(f"live accuracy (its last {window} labelled)")
    ax.set_ylim(0, 1)
    ax.set_title("refitd demo: live accuracy through a topic shift, detection, refit and promotion")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def drift_signals(checks: list[dict[str, Any]], *, phase2_at: float, promotions: list[tuple[float, str]],
                  path: Path) -> Path:
    """One panel per drift signal: its score at each check against its threshold."""
    plt = _pyplot()
    rows = [(c["at"], name, s["score"], s["threshold"]) for c in checks for name, s in c["signals"].items()
            if not name.startswith("_")]
    frame = pd.DataFrame(rows, columns=["at", "signal", "score", "threshold"])
    names = sorted(frame["signal"].unique()) if len(frame) else []
    cols = 3
    nrows = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(12, 3 * nrows), dpi=100, squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        part = frame[frame["signal"] == name]
        ax.plot(part["at"], part["score"], "o-", markersize=3)
        ax.plot(part["at"], part["threshold"], "--", color="tab:red", linewidth=1)
        ax.axvspan(phase2_at, max(float(frame["at"].max()), phase2_at + 1), color="tab:orange", alpha=0.08)
        for at, _ in promotions:
            ax.axvline(at, color="tab:green", linewidth=1.5)
        ax.set_title(name, fontsize=10)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("drift signals per check (dashed: threshold; shaded: phase 2; green: promotion)", fontsize=11)
    fig.supxlabel("seconds since the stream started", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
