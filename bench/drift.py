"""``python -m refitd.bench drift``: what a drift check costs and what it catches, on the bundled corpus.

Three parts, all through the same ``refitd.daemon.drift.check.compute`` a scheduled check runs:

1. check time for windows of 1k / 5k / 10k / 100k rows against a 5k reference (the
   baseline for the ratio is the 10k window, measured in the same run);
2. detection: windows of airline traffic (the champion's topic) with 0 / 10 / 20 / 30 / 50 %
   other-topic tweets injected, N random windows per share, at the shipped window and
   reference sizes — detection rate per share, false alarms on the clean share;
3. requests until detection: a stream that turns 30 % other-topic at a known request, checked
   every M requests over the last ``window_size`` requests; how many requests after the shift
   the verdict flips.

Texts are the corpus's ``stream`` split (never trained or tested on); the reference is the
champion's airline training split scored by the champion's ONNX model, as in the daemon.
Windows larger than the stream pool are drawn with replacement (the 100k timing).
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

from refitd.bench.report import save
from refitd.core import children, registry
from refitd.core.artifacts import ArtifactStore
from refitd.core.datasets import load_configured
from refitd.core.db import engine_for, session_scope
from refitd.core.settings import Settings
from refitd.daemon.drift.check import compute, score
from refitd.serving.runtime import OnnxClassifier

SHARES = (0.0, 0.1, 0.2, 0.3, 0.5)
SIZES = (1_000, 5_000, 10_000, 100_000)


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
        frame, self.emb = score(runtime, texts)
        self.frame = frame.assign(true_label=None)

    def take(self, idx: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
        return self.frame.iloc[idx].reset_index(drop=True), self.emb[idx]


def mixed(rng: np.random.Generator, airline: Scored, other: Scored, size: int, share: float):  # type: ignore[no-untyped-def]
    n_other = int(round(size * share))
    a = airline.take(rng.choice(len(airline.frame), size - n_other, replace=size - n_other > len(airline.frame)))
    o = other.take(rng.choice(len(other.frame), n_other, replace=n_other > len(other.frame)))
    frame = pd.concat([a[0], o[0]], ignore_index=True)
    emb = np.concatenate([a[1], o[1]])
    order = rng.permutation(len(frame))
    return frame.iloc[order].reset_index(drop=True), emb[order]


def timings(settings: Settings, champion, reference: Scored, airline: Scored, other: Scored,  # type: ignore[no-untyped-def]
            repeats: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    ref5k = reference.take(rng.choice(len(reference.frame), min(5_000, len(reference.frame)), replace=False))
    compute(settings, champion, ref5k[0], ref5k[1], *mixed(rng, airline, other, 1_000, 0.1))  # warm-up: imports
    rows = []
    for size in SIZES:
        window = mixed(rng, airline, other, size, 0.1)
        runs = []
        for _ in range(repeats if size <= 10_000 else max(1, repeats // 2)):
            start = time.perf_counter()
            compute(settings, champion, ref5k[0], ref5k[1], *window)
            runs.append(time.perf_counter() - start)
        rows.append({"window": size, "reference": len(ref5k[0]), "median_s": statistics.median(runs), "runs": len(runs)})
    base = next(r["median_s"] for r in rows if r["window"] == 10_000)
    for r in rows:
        r["vs_10k"] = r["median_s"] / base
    return rows


def detection(settings: Settings, champion, reference: Scored, airline: Scored, other: Scored,  # type: ignore[no-untyped-def]
              windows: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(1)
    ref = reference.take(rng.choice(len(reference.frame), min(settings.drift.reference_size, len(reference.frame)),
                                    replace=False))
    rows = []
    for share in SHARES:
        flagged, named = 0, {}
        for _ in range(windows):
            outcome = compute(settings, champion, ref[0], ref[1], *mixed(rng, airline, other,
                                                                          settings.drift.window_size, share))
            flagged += outcome.verdict == "drifted"
            for s in outcome.signals:
                named[s.name] = named.get(s.name, 0) + int(s.drifted)
        rows.append({"other_share": share, "windows": windows, "drifted": flagged, "rate": flagged / windows,
                     "signals_fired": {k: v for k, v in named.items() if v}})
    return rows


def until_detection(settings: Settings, champion, reference: Scored, airline: Scored, other: Scored,  # type: ignore[no-untyped-def]
                    *, every: int, streams: int, share: float = 0.3) -> list[int | None]:
    """Requests after the shift until a check first says drifted (None: not within 3 windows)."""
    size = settings.drift.window_size
    rng = np.random.default_rng(2)
    ref = reference.take(rng.choice(len(reference.frame), min(settings.drift.reference_size, len(reference.frame)),
                                    replace=False))
    out: list[int | None] = []
    for _ in range(streams):
        before = mixed(rng, airline, other, size, 0.0)
        after = mixed(rng, airline, other, 3 * size, share)
        frame = pd.concat([before[0], after[0]], ignore_index=True)
        emb = np.concatenate([before[1], after[1]])
        found = None
        for k in range(every, 3 * size + 1, every):
            end = size + k
            outcome = compute(settings, champion, ref[0], ref[1], frame.iloc[end - size : end], emb[end - size : end])
            if outcome.verdict == "drifted":
                found = k
                break
        out.append(found)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m refitd.bench drift", description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="state dir with a champion (default: train a quick one)")
    parser.add_argument("--windows", type=int, default=20, help="random windows per injected share")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats per window size (median)")
    parser.add_argument("--every", type=int, default=100, help="requests between checks in the stream test")
    parser.add_argument("--streams", type=int, default=5, help="shifted streams in the requests-until-detection test")
    parser.add_argument("--texts", type=int, default=5_000,
                        help="texts scored per pool (reference, other topics; the airline stream is capped at 3×)")
    args = parser.parse_args(argv)

    home = champion_home(args.home)
    settings = Settings.load(home=home)
    with session_scope(engine_for(settings)) as session:
        champion = registry.get_champion(session)
    if champion is None:
        print(f"no champion in {home}; run `refitd --home {home} init` first", file=sys.stderr)
        return 2
    runtime = OnnxClassifier(champion.version, ArtifactStore(settings.models_dir).verify(champion.version),
                             provider=settings.serving.provider, threads=settings.serving.threads)
    runtime.load()
    t = settings.training
    corpus = load_configured(data=None, text_column="text", label_column="label", topics=[],
                             validation_fraction=t.validation_fraction, test_fraction=t.test_fraction)
    start = time.perf_counter()
    n = args.texts
    reference = Scored(runtime, corpus[(corpus["split"] == "train") & (corpus["topic"] == "airline")]
                       .sample(n, random_state=0)["text"].tolist())
    stream = corpus[corpus["split"] == "stream"]
    airline = Scored(runtime, stream[stream["topic"] == "airline"]["text"].head(3 * n).tolist())
    other = Scored(runtime, stream[stream["topic"] != "airline"].sample(min(n, 4_000), random_state=0)["text"].tolist())
    print(f"scored {len(reference.frame) + len(airline.frame) + len(other.frame)} texts with {champion.version} "
          f"in {time.perf_counter() - start:.0f} s", file=sys.stderr)

    timing = timings(settings, champion, reference, airline, other, args.repeats)
    detect = detection(settings, champion, reference, airline, other, args.windows)
    delays = until_detection(settings, champion, reference, airline, other, every=args.every, streams=args.streams)
    found = [d for d in delays if d is not None]
    result = {"champion": champion.version, "window_size": settings.drift.window_size,
              "reference_size": settings.drift.reference_size, "timing": timing, "detection": detect,
              "until_detection": {"every": args.every, "share": 0.3, "requests": delays,
                                  "median": statistics.median(found) if found else None}}
    save("drift", result)
    print_tables(result)
    return 0


def ratios(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    t = {row["window"]: row for row in r["timing"]}
    d = {row["other_share"]: row for row in r["detection"]}
    return [("check time 5k window vs 5k reference", f"{t[5000]['median_s']:.2f} s", "≤ 2 s"),
            ("check time 100k / 10k", f"{t[100000]['vs_10k']:.2f}×", "≤ 12×"),
            ("false alarms, clean windows", f"{d[0.0]['drifted']}/{d[0.0]['windows']}", "0/20"),
            ("detection at 30% other topics", f"{d[0.3]['rate']:.0%}", "≥ 90%"),
            ("requests after a 30% shift until drifted (median)", f"{r['until_detection']['median']}", "≤ 1,000")]


def print_tables(result: dict[str, Any]) -> None:
    print("\ncheck time (median), window vs a 5k reference")
    print(f"{'window':>8} {'seconds':>8} {'vs 10k':>7}")
    for r in result["timing"]:
        print(f"{r['window']:>8} {r['median_s']:>8.2f} {r['vs_10k']:>6.2f}×")
    print(f"\ndetection, window {result['window_size']} vs reference {result['reference_size']}")
    print(f"{'other %':>8} {'drifted':>8} {'rate':>6}  signals that fired (count)")
    for r in result["detection"]:
        fired = ", ".join(f"{k} {v}" for k, v in r["signals_fired"].items()) or "-"
        print(f"{r['other_share'] * 100:>7.0f}% {r['drifted']:>4}/{r['windows']:<3} {r['rate']:>6.0%}  {fired}")
    u = result["until_detection"]
    print(f"\nrequests after a shift to {u['share']:.0%} other topics until drifted (checked every {u['every']}): "
          f"{u['requests']} — median {u['median']}")
