"""``python -m bench [serve|train|drift]``: benchmarks that print ratios against baselines run alongside."""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

SUITES = {"serve": "bench.serve", "train": "bench.train", "drift": "bench.drift", "cotenancy": "bench.cotenancy"}
PLANNED: dict[str, str] = {}


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    names = argv[:1] or list(SUITES)
    name, rest = names[0], argv[1:]
    if name in PLANNED:
        print(f"bench {name} is not built yet (it comes with {PLANNED[name]})", file=sys.stderr)
        return 2
    if name not in SUITES:
        print(f"unknown benchmark {name!r}; choose from {', '.join(list(SUITES) + list(PLANNED))}", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(SUITES[name]).main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
