"""``python -m refitd.bench hop``: what refitd's batcher adds to one request's model call, against the
model called inline and against the hand-off a FastAPI user writes (``run_in_executor`` on one worker).

One process on one core (``--core``), the champion's runtime as ``refitd serve`` loads it (fp32 and
INT8, one intra-op thread). For every text in turn, the three ways one after another (inline, executor,
batcher), so a shared machine's changing load falls on all alike; medians over all texts, and each way's
cost over inline. Concurrency 1: the time a lone request spends getting to the model and back, which is
the part of the server's added latency (``bench serve``: p50 at 1 − raw single-text p50) that is not HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from refitd.bench.drift import champion_home
from refitd.bench.report import save
from refitd.bench.serve import _champion, _fitted, _texts
from refitd.core.artifacts import ArtifactMeta
from refitd.serving.batcher import Batcher
from refitd.serving.runtime import OnnxClassifier

WAYS = ("inline", "executor", "batcher")


async def _measure(runtime: OnnxClassifier, texts: list[str]) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=1)
    batcher = Batcher(lambda: runtime, max_batch_size=32, max_wait_ms=5, queue_size=1024, timeout_s=60)
    await batcher.start()
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    try:
        for text in texts:
            start = time.perf_counter()
            runtime.predict([text])
            seconds["inline"].append(time.perf_counter() - start)
            start = time.perf_counter()
            await loop.run_in_executor(executor, runtime.predict, [text])
            seconds["executor"].append(time.perf_counter() - start)
            start = time.perf_counter()
            await batcher.submit([text])
            seconds["batcher"].append(time.perf_counter() - start)
    finally:
        await batcher.stop()
        executor.shutdown()
    return {way: statistics.median(s) * 1000 for way, s in seconds.items()}


def run(home: Path, *, texts: int, core: int | None) -> dict[str, Any]:
    if core is not None:
        os.sched_setaffinity(0, {core})
    version, artifact, _settings = _champion(home)
    meta = ArtifactMeta.read(artifact)
    sample = _fitted(_texts(texts), artifact / meta.tokenizer_file, meta.max_length)
    out: dict[str, Any] = {"version": version, "texts": len(sample), "core": core, "precisions": {}}
    for precision in ("fp32", "int8") if meta.int8_file else ("fp32",):
        runtime = OnnxClassifier(version, artifact, threads=1, precision=precision)
        runtime.load()
        p50 = asyncio.run(_measure(runtime, sample))
        out["precisions"][precision] = {"p50_ms": p50, "over_inline_ms": {w: p50[w] - p50["inline"] for w in WAYS}}
    return out


def render(r: dict[str, Any]) -> str:
    lines = [f"bench hop: {r['version']}, {r['texts']} texts one at a time, core {r['core']}",
             "| precision | inline p50 ms | executor | batcher | batcher − executor |", "|---|---:|---:|---:|---:|"]
    for precision, p in r["precisions"].items():
        over = p["over_inline_ms"]
        lines.append(f"| {precision} | {p['p50_ms']['inline']:.3f} | +{over['executor']:.3f} | +{over['batcher']:.3f} | "
                     f"{over['batcher'] - over['executor']:+.3f} |")
    return "\n".join(lines)


def ratios(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(f"{precision}: batcher hop / executor hop (ms over inline)",
             f"{p['over_inline_ms']['batcher']:.3f} / {p['over_inline_ms']['executor']:.3f}", "≤ executor")
            for precision, p in r["precisions"].items()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m refitd.bench hop", description=__doc__.split("\n\n")[0])
    p.add_argument("--home", type=Path, default=None, help="a state dir with a champion (default: train a quick one)")
    p.add_argument("--texts", type=int, default=1200, help="texts, each sent all three ways")
    p.add_argument("--core", type=int, default=None, help="pin the process to this CPU (default: the last one)")
    args = p.parse_args(argv)
    core = args.core if args.core is not None else max(os.sched_getaffinity(0))
    result = run(champion_home(args.home), texts=args.texts, core=core)
    save("hop", result)
    print(render(result))
    return 0
