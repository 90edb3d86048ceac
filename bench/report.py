"""Where benchmark results go, and the one table of ratios `python -m refitd.bench` prints."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

# bench/results/ in a source checkout; REFITD_BENCH_RESULTS moves it (tests, installed wheels).
RESULTS = Path(os.environ.get("REFITD_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def save(suite: str, result: dict[str, Any], default: Any = str) -> Path:
    """Write a suite's result as ``<suite>-<time>.json`` and ``<suite>-latest.json``; return the latter."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, default=default)
    (RESULTS / f"{suite}-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(text)
    latest = RESULTS / f"{suite}-latest.json"
    latest.write_text(text)
    return latest


def latest(suite: str) -> dict[str, Any]:
    return json.loads((RESULTS / f"{suite}-latest.json").read_text())


def table(rows: list[tuple[str, str, str, str]]) -> str:
    """Markdown: suite, ratio, value, target."""
    lines = ["| suite | ratio | value | target |", "|---|---|---:|---:|"]
    lines += [f"| {s} | {name} | {value} | {target} |" for s, name, value, target in rows]
    return "\n".join(lines)
