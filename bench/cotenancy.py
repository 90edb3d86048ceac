"""``python -m refitd.bench cotenancy``: what a running refit costs serving, on the same machine.

`refitd serve` answers a closed-loop load (one tweet per request) in rounds; first with
nothing else running (the baseline), then while a refit runs exactly as the daemon
launches it (``RefitLauncher``: a child process at ``refit.nice``, ``refit.threads`` threads),
then again alone. Prints p50 / p99 latency and throughput of each phase (median over
rounds) and the ratios during / alone. The refit runs on a copy of the home.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from refitd.bench.drift import champion_home
from refitd.bench.report import save
from refitd.bench.load import LoadResult, drive
from refitd.bench.serve import _free_port, _run_server, _stop, _texts
from refitd.core.db import engine_for
from refitd.core.settings import Settings
from refitd.daemon.launcher import RefitLauncher



def _round(url: str, texts: list[str], concurrency: int) -> LoadResult:
    return drive(f"{url}/v1/predict", texts, concurrency, lambda t: {"text": t})


def _summary(rounds: list[LoadResult]) -> dict[str, Any]:
    return {"rounds": len(rounds), "p50_ms": statistics.median(r.pct(0.5) for r in rounds),
            "p99_ms": statistics.median(r.pct(0.99) for r in rounds), "rps": statistics.median(r.rps for r in rounds),
            "errors": sum(r.errors for r in rounds)}


def run(home: Path, *, concurrency: int, per_round: int, alone_rounds: int, quick: bool, threads: int,
        nice: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="refitd-bench-cotenancy-"))
    shutil.copytree(home, work, dirs_exist_ok=True)
    for stale in ("daemon.json", "refit.log"):
        (work / stale).unlink(missing_ok=True)
    settings = Settings.load(home=work, refit={"quick": quick, "threads": threads, "nice": nice})
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _run_server([sys.executable, "-m", "refitd.cli", "serve", "--port", str(port)],
                         {**os.environ, "REFITD_HOME": str(work), "REFITD_LOG_LEVEL": "WARNING"}, f"{url}/v2/health/ready")
    texts = _texts(per_round)
    try:
        _round(url, texts[:50], concurrency)  # warm-up
        before = [_round(url, texts, concurrency) for _ in range(alone_rounds)]
        launcher = RefitLauncher(settings, engine_for(settings))
        started = time.perf_counter()
        ok, where = launcher.start("bench", "cotenancy benchmark")
        if not ok:
            raise RuntimeError(where)
        during = []
        while launcher.launch is not None:
            during.append(_round(url, texts, concurrency))
            launcher.poll()
        refit_s = time.perf_counter() - started
        outcome = launcher.finished[-1]
        after = [_round(url, texts, concurrency) for _ in range(alone_rounds)]
    finally:
        _stop(server)
    alone = _summary(before + after)
    busy = _summary(during[:-1] or during)  # the last round may have run mostly after the refit ended
    return {"concurrency": concurrency, "per_round": per_round, "refit": {"seconds": round(refit_s, 1), "quick": quick,
            "threads": threads, "nice": nice, "outcome": outcome}, "alone": alone, "during_refit": busy,
            "ratios": {"p50": busy["p50_ms"] / alone["p50_ms"], "p99": busy["p99_ms"] / alone["p99_ms"],
                       "rps": busy["rps"] / alone["rps"]}}


def render(r: dict[str, Any]) -> str:
    lines = [f"serving at concurrency {r['concurrency']}, rounds of {r['per_round']} requests; refit "
             f"{'quick' if r['refit']['quick'] else 'full'}, nice {r['refit']['nice']}, {r['refit']['threads']} "
             f"thread(s), {r['refit']['seconds']} s ({r['refit']['outcome'].get('verdict') or r['refit']['outcome']['status']})",
             f"{'phase':<14} {'rounds':>6} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}"]
    for name in ("alone", "during_refit"):
        p = r[name]
        lines.append(f"{name:<14} {p['rounds']:>6} {p['rps']:>7.1f} {p['p50_ms']:>7.1f} {p['p99_ms']:>7.1f} {p['errors']:>6}")
    x = r["ratios"]
    lines.append(f"during / alone: p50 {x['p50']:.2f}×, p99 {x['p99']:.2f}×, throughput {x['rps']:.2f}×")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refitd.bench cotenancy", description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="state dir with a champion (default: train a quick one)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--per-round", type=int, default=200)
    parser.add_argument("--alone-rounds", type=int, default=3, help="rounds before and after the refit, each")
    parser.add_argument("--full", action="store_true", help="a full refit instead of a quick one")
    parser.add_argument("--threads", type=int, default=None, help="refit threads (default: refit.threads)")
    parser.add_argument("--nice", type=int, default=None, help="refit niceness (default: refit.nice)")
    args = parser.parse_args(argv)
    defaults = Settings.load(home=tempfile.mkdtemp()).refit
    result = run(champion_home(args.home), concurrency=args.concurrency, per_round=args.per_round,
                 alone_rounds=args.alone_rounds, quick=not args.full,
                 threads=args.threads or defaults.threads, nice=defaults.nice if args.nice is None else args.nice)
    save("cotenancy", result)
    print(render(result))
    return 0


def ratios(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    x = r["ratios"]
    return [("serving p50 during a refit / alone", f"{x['p50']:.2f}×", "—"),
            ("serving p99 during a refit / alone", f"{x['p99']:.2f}×", "—")]
