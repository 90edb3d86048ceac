"""``python -m refitd.bench [serve|hop|route|spin|shadow|train|drift|cotenancy|store|ensemble|recovery|defaults|estimate] [options]``; with no suite, all of them and one table of ratios.

Every suite runs its baseline in the same run and prints ratios; results go to
``bench/results/<suite>-latest.json`` (and a timestamped copy). ``python -m refitd.bench --home DIR``
shares one trained state dir between the suites that need a champion; without it one is
trained with `refitd init` first.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

SUITES = {"serve": "refitd.bench.serve", "hop": "refitd.bench.hop", "route": "refitd.bench.route", "spin": "refitd.bench.spin", "shadow": "refitd.bench.shadow", "train": "refitd.bench.train", "drift": "refitd.bench.drift",
          "cotenancy": "refitd.bench.cotenancy", "store": "refitd.bench.store", "ensemble": "refitd.bench.ensemble",
          "recovery": "refitd.bench.recovery", "defaults": "refitd.bench.defaults", "estimate": "refitd.bench.estimate"}
# Run by hand: a search that sets defaults (an hour on 2 cores), not a benchmark; a replay over the drift checks a
# home's daemon recorded (a kept demo's), which a freshly trained home has none of.
ON_DEMAND = {"defaults", "estimate"}
NEEDS_HOME = {"serve", "hop", "route", "spin", "shadow", "drift", "cotenancy"}


def run_all(argv: list[str]) -> int:
    from refitd.bench.report import latest, table

    p = argparse.ArgumentParser(prog="python -m refitd.bench", description="every suite, then one table of ratios")
    p.add_argument("--home", type=Path, help="a state dir with a champion (default: train one with `refitd init`)")
    args = p.parse_args(argv)
    home = args.home
    started = time.perf_counter()
    if home is None:
        home = Path(tempfile.mkdtemp(prefix="refitd-bench-"))
        print(f"training the champion the suites share in {home} …", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "refitd.cli", "--home", str(home), "init"],
                       check=True)
    rows = []
    for name, module_name in SUITES.items():
        if name in ON_DEMAND:
            continue
        print(f"\n=== bench {name} ===", flush=True)
        module = importlib.import_module(module_name)
        code = module.main(["--home", str(home)] if name in NEEDS_HOME else [])
        if code != 0:
            print(f"bench {name} failed with {code}", file=sys.stderr)
            return code
        rows += [(name, *row) for row in module.ratios(latest(name))]
    print(f"\n=== all suites: {time.strftime('%Y-%m-%d')}, {_cpu()}, {os.cpu_count()} CPUs, "
          f"{time.perf_counter() - started:.0f} s ===")
    print(table(rows))
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    if not argv or argv[0].startswith("-"):
        return run_all(argv)
    name, rest = argv[0], argv[1:]
    if name not in SUITES:
        print(f"unknown benchmark {name!r}; choose from {', '.join(SUITES)}", file=sys.stderr)
        return 2
    return importlib.import_module(SUITES[name]).main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
