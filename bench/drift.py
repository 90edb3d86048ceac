"""``python -m refitd.bench drift``: how often a drift check cries wolf and how much shift it catches — a
power study in the spirit of "Failing Loudly" (Rabanser et al., 2019) on the bundled corpus.

For each window size (100, 300, 1,000, 5,000 rows) a reference of airline tweets (the champion's topic:
max(drift.reference_size, 2 × window) rows of the corpus's training split, scored by the champion) is
prepared and calibrated as a daemon check does it (``refitd.daemon.drift.calibration``). Windows of unseen
airline tweets (the other splits) with 0 / 5 / 10 / 20 / 30 / 50 % tweets about other topics mixed in are
judged per signal and combined: ``--clean`` windows at 0 % give the false-alarm rate (with its 95 %
Clopper–Pearson interval), ``--windows`` per shifted cell the detection rate.

The anchor, in the same run and on the same windows: Evidently's own scores at Evidently's default
thresholds (drifted when any signal is) and refitd's former rule (2 signals over fixed thresholds), through
the daemon's ``compute`` with ``drift.calibrated = false`` — on the first ``--anchor`` windows of each cell
only, since Evidently trains a classifier for the text and embedding scores of every window.

Also: calibration time per reference, a full check's time (Evidently report included) per window size,
and requests until a stream turned 30 % off-topic is the verdict (``drift.consecutive`` checks in a row).
Results: ``drift-latest.json`` and ``drift-power.png`` (power curves) under bench/results.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import beta

from refitd.bench.report import RESULTS, save
from refitd.core import children, registry
from refitd.core.artifacts import ArtifactStore
from refitd.core.datasets import load_configured
from refitd.core.db import engine_for, session_scope
from refitd.core.settings import Settings
from refitd.daemon.drift.calibration import SIGNALS, Features, Reference, calibrate, scores
from refitd.daemon.drift.check import compute, score
from refitd.daemon.drift.verdict import held_verdict
from refitd.daemon.drift.signals import DEFAULT_SPECS
from refitd.serving.runtime import OnnxClassifier

SIZES = (100, 300, 1_000, 5_000)
SHARES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
# Evidently's default threshold per method (StatTest.default_threshold; model(): 0.55); refitd's former rule.
EVIDENTLY_DEFAULTS = {"text": 0.55, "embedding": 0.55, "label": 0.1} | dict.fromkeys(
    ("confidence", "length", "oov_share", "non_letter_share"), 0.1)
FORMER = {spec.name: spec.threshold for spec in DEFAULT_SPECS} | {"embedding": 0.55}


def champion_home(home: Path | None) -> Path:
    """The given state dir, or a fresh one with a quickly trained champion."""
    if home is not None:
        return home
    home = Path(tempfile.mkdtemp(prefix="refitd-bench-drift-"))
    print(f"training a quick champion in {home} …", file=sys.stderr)
    code, result = children.run(Settings.load(home=home, log_level="WARNING"), ["init", "--quick"],
                                log_file=home / "init.log")
    if code != 0 or not result.get("promoted"):
        raise SystemExit(f"training the champion failed ({result.get('error') or result.get('reason')}); "
                         f"see {home / 'init.log'}")
    return home


class Scored:
    """Texts scored once by the champion: label, confidence, embedding per row."""

    def __init__(self, runtime: OnnxClassifier, texts: list[str]) -> None:
        self.frame, self.emb = score(runtime, texts)

    def take(self, idx: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
        return self.frame.iloc[idx].reset_index(drop=True), self.emb[idx]


def pools(settings: Settings, runtime: OnnxClassifier, cap: int | None) -> dict[str, Scored]:
    """reference: airline tweets of the training split; airline: unseen airline tweets; other: other topics."""
    t = settings.training
    corpus = load_configured(data=None, text_column="text", label_column="label", topics=[],
                             validation_fraction=t.validation_fraction, test_fraction=t.test_fraction)
    airline = corpus["topic"] == "airline"
    parts = {"reference": corpus[airline & (corpus["split"] == "train")],
             "airline": corpus[airline & (corpus["split"] != "train")], "other": corpus[~airline]}
    sizes = {"reference": cap, "airline": cap, "other": min(cap or 4_000, 4_000)}
    return {name: Scored(runtime, rows.sample(min(len(rows), sizes[name] or len(rows)), random_state=0)["text"].tolist())
            for name, rows in parts.items()}


def draw(rng: np.random.Generator, n_air: int, n_other: int, size: int, share: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a window: airline and other-topic (with replacement only where a smoke run's pool is too small)."""
    k = round(size * share)
    return rng.choice(n_air, size - k, replace=size - k > n_air), rng.choice(n_other, k, replace=k > n_other)


def interval(hits: int, n: int) -> tuple[float, float]:
    """95 % Clopper–Pearson interval of a rate."""
    low = 0.0 if hits == 0 else float(beta.ppf(0.025, hits, n - hits + 1))
    high = 1.0 if hits == n else float(beta.ppf(0.975, hits + 1, n - hits))
    return low, high


def study(settings: Settings, champion, data: dict[str, Scored], size: int,  # type: ignore[no-untyped-def]
          args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """Every cell of one window size: calibrated per signal and combined, and the Evidently anchor."""
    d = settings.drift
    n_ref = min(len(data["reference"].frame), max(d.reference_size, 2 * size))
    reference = Reference.prepare(*data["reference"].take(np.arange(n_ref)))
    air = reference.featurizer.transform(data["airline"].frame, data["airline"].emb)
    other = reference.featurizer.transform(data["other"].frame, data["other"].emb)
    cal = calibrate(reference.features, window=size, false_alarm_rate=d.false_alarm_rate, draws=d.calibration_draws)
    fixed = settings.model_copy(update={"drift": d.model_copy(update={"calibrated": False, "min_window": 30})})
    rng = np.random.default_rng(size)
    cells = []
    for share in SHARES:
        n = args.clean if share == 0 else args.windows
        fired = dict.fromkeys(SIGNALS, 0)
        combined, anchor = 0, []
        for i in range(n):
            ia, io = draw(rng, len(air), len(other), size, share)
            scored = scores(reference.features, Features.concat([air.take(ia), other.take(io)]))
            drifted = [name for name in SIGNALS if cal.drifted(name, scored[name])]
            combined += bool(drifted)
            for name in drifted:
                fired[name] += 1
            if i < min(args.anchor, args.windows):
                anchor.append(evidently_scores(fixed, champion, reference, data, ia, io))
        cells.append({"share": share, "windows": n, "drifted": combined, "rate": combined / n,
                      "interval": interval(combined, n), "signals": {k: v / n for k, v in fired.items()},
                      "anchor": judge_anchor(anchor)})
        print(f"  window {size}, {share:.0%} other: {combined}/{n} drifted; Evidently defaults "
              f"{cells[-1]['anchor']['evidently_defaults']:.0%} of {len(anchor)}", file=sys.stderr)
    check_s = time_check(settings, champion, reference, data, cal, rng, size, args.repeats)
    return {"window": size, "reference": len(reference.features), "fit_rows": n_ref - len(reference.features),
            "calibration_s": cal.seconds, "null_split": [cal.window, cal.reference], "cutoff": cal.cutoff,
            "check_s": check_s, "cells": cells}, (reference, air, other, cal)


def evidently_scores(settings: Settings, champion, reference: Reference, data: dict[str, Scored],  # type: ignore[no-untyped-def]
                     ia: np.ndarray, io: np.ndarray) -> dict[str, float]:
    frame, emb = window_of(data, ia, io)
    outcome = compute(settings, champion, reference, frame, emb, None)
    return {s.name: s.score for s in outcome.signals}


def window_of(data: dict[str, Scored], ia: np.ndarray, io: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    a, o = data["airline"].take(ia), data["other"].take(io)
    return pd.concat([a[0], o[0]], ignore_index=True).assign(true_label=None), np.concatenate([a[1], o[1]])


def judge_anchor(rows: list[dict[str, float]]) -> dict[str, Any]:
    """Evidently's scores at its default thresholds (any signal) and at refitd's former rule (2 signals)."""
    if not rows:
        return {"windows": 0, "evidently_defaults": float("nan"), "former_rule": float("nan"), "signals": {}}
    def over(r: dict[str, float], t: dict[str, float]) -> list[str]:  # every anchor method: drift above
        return [k for k in SIGNALS if r[k] > t[k]]

    return {"windows": len(rows),
            "evidently_defaults": sum(bool(over(r, EVIDENTLY_DEFAULTS)) for r in rows) / len(rows),
            "former_rule": sum(len(over(r, FORMER)) >= 2 for r in rows) / len(rows),
            "signals": {k: sum(r[k] > EVIDENTLY_DEFAULTS[k] for r in rows) / len(rows) for k in SIGNALS}}


def time_check(settings: Settings, champion, reference: Reference, data: dict[str, Scored], cal,  # type: ignore[no-untyped-def]
               rng: np.random.Generator, size: int, repeats: int) -> float:
    """Median seconds of a full calibrated check (Evidently report included) on a window 10 % off-topic."""
    short = settings.model_copy(update={"drift": settings.drift.model_copy(update={"min_window": 30})})
    frame, emb = window_of(data, *draw(rng, len(data["airline"].frame), len(data["other"].frame), size, 0.1))
    runs = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        compute(short, champion, reference, frame, emb, cal)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def until_detection(prepared, size: int, *, every: int, streams: int, needs: int,  # type: ignore[no-untyped-def]
                    share: float = 0.3) -> list[int | None]:
    """Requests after a shift until the verdict (``needs`` drifted checks in a row) says drifted; None: not
    within three windows."""
    reference, air, other, cal = prepared
    rng = np.random.default_rng(2)
    out: list[int | None] = []
    for _ in range(streams):
        before = air.take(rng.choice(len(air), size, replace=False))
        ia, io = draw(rng, len(air), len(other), 3 * size, share)
        after = Features.concat([air.take(ia), other.take(io)])
        stream = Features.concat([before, after.take(rng.permutation(len(after)))])
        found: list[str] = []
        verdict, at = "not_drifted", None
        for k in range(every, 3 * size + 1, every):
            scored = scores(reference.features, stream.take(np.arange(k, k + size)))
            found.insert(0, "drifted" if any(cal.drifted(n, scored[n]) for n in SIGNALS) else "not_drifted")
            verdict, _ = held_verdict(verdict, found[:needs], needs=needs)
            if verdict == "drifted":
                at = k
                break
        out.append(at)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m refitd.bench drift", description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="state dir with a champion (default: train a quick one)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="window sizes")
    parser.add_argument("--clean", type=int, default=200, help="clean windows per size (false-alarm rate)")
    parser.add_argument("--windows", type=int, default=50, help="windows per size and shifted share")
    parser.add_argument("--anchor", type=int, default=20, help="windows per cell the Evidently anchor judges")
    parser.add_argument("--repeats", type=int, default=1, help="timed full checks per size (median)")
    parser.add_argument("--every", type=int, default=100, help="requests between checks in the stream test")
    parser.add_argument("--streams", type=int, default=5, help="shifted streams in the requests-until-drifted test")
    parser.add_argument("--texts", type=int, default=None,
                        help="texts scored per pool (smoke runs); default all — 5,000-row windows need them")
    args = parser.parse_args(argv)

    home = champion_home(args.home)
    settings = Settings.load(home=home)
    with session_scope(engine_for(settings)) as session:
        champion = registry.get_champion(session)
    if champion is None:
        print(f"no champion in {home}; run `refitd --home {home} init` first", file=sys.stderr)
        return 2
    runtime = OnnxClassifier(champion.version, ArtifactStore.from_settings(settings).verify(champion.version),
                             provider=settings.serving.provider, threads=settings.serving.threads)
    runtime.load()
    start = time.perf_counter()
    data = pools(settings, runtime, args.texts)
    print(f"scored {sum(len(p.frame) for p in data.values())} texts with {champion.version} "
          f"in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    fits = [s for s in args.sizes if s <= min(len(data["airline"].frame), len(data["reference"].frame))]
    results, prepared = [], {}
    for size in fits:
        row, prepared[size] = study(settings, champion, data, size, args)
        results.append(row)
    stream_size = max([s for s in fits if s <= settings.drift.window_size] or [min(fits)])
    delays = until_detection(prepared[stream_size], stream_size, every=args.every, streams=args.streams,
                             needs=settings.drift.consecutive)
    found = [d for d in delays if d is not None]
    result = {"champion": champion.version, "false_alarm_rate": settings.drift.false_alarm_rate,
              "draws": settings.drift.calibration_draws, "consecutive": settings.drift.consecutive,
              "sizes": results,
              "until_detection": {"window": stream_size, "every": args.every, "share": 0.3, "requests": delays,
                                  "median": statistics.median(found) if found else None}}
    save("drift", result)
    result["png"] = str(plot(result, RESULTS / "drift-power.png"))
    print_tables(result)
    return 0


def plot(result: dict[str, Any], path: Path) -> Path:
    """Power curves, one panel per window size: detection rate against the off-topic share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = result["sizes"]
    fig, axes = plt.subplots(1, len(sizes), figsize=(4 * len(sizes), 3.6), dpi=100, sharey=True, squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        x = [c["share"] * 100 for c in size["cells"]]
        for name in SIGNALS:
            ax.plot(x, [c["signals"][name] for c in size["cells"]], linewidth=0.8, alpha=0.7, label=name)
        ax.plot(x, [c["rate"] for c in size["cells"]], "k-o", linewidth=2.2, markersize=4, label="refitd (combined)")
        ax.plot(x, [c["anchor"]["evidently_defaults"] for c in size["cells"]], "r--s", markersize=3,
                label="Evidently defaults (any)")
        ax.plot(x, [c["anchor"]["former_rule"] for c in size["cells"]], "--^", color="tab:orange", markersize=3,
                label="former rule (2 fixed)")
        ax.axhline(result["false_alarm_rate"], color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"window {size['window']} (reference {size['reference']})", fontsize=10)
        ax.set_xlabel("other-topic share (%)", fontsize=9)
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("share of windows drifted", fontsize=9)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"drift power on the bundled corpus (false-alarm rate {result['false_alarm_rate']:g} per check)",
                 fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _at(result: dict[str, Any], window: int) -> dict[str, Any]:
    """The study of this window size, or of the largest one run (smoke runs score too few texts for 1,000)."""
    sizes = {s["window"]: s for s in result["sizes"]}
    return sizes.get(window) or sizes[max(sizes)]


def ratios(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    worst = max(r["sizes"], key=lambda s: s["cells"][0]["rate"])
    loose = max(r["sizes"], key=lambda s: s["cells"][0]["anchor"]["evidently_defaults"])
    clean = worst["cells"][0]
    at = _at(r, 1000)
    cell = {c["share"]: c for c in at["cells"]}
    u = r["until_detection"]
    return [
        (f"false alarms, clean windows (worst size: {worst['window']})",
         f"{clean['drifted']}/{clean['windows']} (95% ≤ {clean['interval'][1]:.1%})", f"≤ {r['false_alarm_rate']:.0%}"),
        (f"detection at 20% other topics, {at['window']}-row window", f"{cell[0.2]['rate']:.0%}", "≥ 90%"),
        (f"detection at 10% other topics, {at['window']}-row window", f"{cell[0.1]['rate']:.0%}", "≥ 50%"),
        (f"anchor: Evidently's default thresholds, false alarms (worst size: {loose['window']})",
         f"{loose['cells'][0]['anchor']['evidently_defaults']:.0%} of {loose['cells'][0]['anchor']['windows']}", "-"),
        (f"calibration time per reference ({at['window']}-row window)", f"{at['calibration_s']:.1f} s", "≤ 10 s"),
        (f"requests after a 30% shift until the verdict is drifted (median, {r['consecutive']} in a row)",
         f"{u['median']}", f"≤ {2 * u['window']:,}"),
    ]


def print_tables(result: dict[str, Any]) -> None:
    print(f"\ncalibrated drift checks, false-alarm rate {result['false_alarm_rate']:g} per check "
          f"({result['draws']} null splits per reference)")
    print(f"{'window':>7} {'ref':>6} {'null split':>11} {'calib s':>8} {'check s':>8}  "
          + " ".join(f"{s:>6.0%}" for s in SHARES) + "   (share of windows drifted by other-topic share)")
    for s in result["sizes"]:
        cells = s["cells"]
        print(f"{s['window']:>7} {s['reference']:>6} {'/'.join(map(str, s['null_split'])):>11} "
              f"{s['calibration_s']:>8.2f} {s['check_s']:>8.2f}  " + " ".join(f"{c['rate']:>6.1%}" for c in cells))
        print(f"{'':>44}" + " ".join(f"{c['anchor']['evidently_defaults']:>6.0%}" for c in cells)
              + f"   Evidently defaults, any signal ({cells[0]['anchor']['windows']}–{cells[-1]['anchor']['windows']}"
              " windows a cell)")
        print(f"{'':>44}" + " ".join(f"{c['anchor']['former_rule']:>6.0%}" for c in cells)
              + "   former rule: 2 signals over fixed thresholds")
        clean = cells[0]
        low, high = clean["interval"]
        print(f"{'':>9}false alarms {clean['drifted']}/{clean['windows']} (95% CI {low:.1%}–{high:.1%}); per signal "
              + ", ".join(k + " " + " ".join(f"{c['signals'][k]:.0%}" for c in cells[1:]) for k in SIGNALS))
    u = result["until_detection"]
    print(f"\nrequests after a shift to {u['share']:.0%} other topics until the verdict is drifted ({u['window']}-row "
          f"window, checked every {u['every']}, {result['consecutive']} in a row): {u['requests']} — median {u['median']}")
    print(f"power curves: {result['png']}")
