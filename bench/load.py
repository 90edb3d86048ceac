"""A closed-loop async load generator and the figures benchmarks print."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def _drive(url: str, bodies: list[dict], concurrency: int) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[dict] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            while True:
                try:
                    body = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                start = time.perf_counter()
                r = await client.post(url, json=body)
                latencies.append((time.perf_counter() - start) * 1000)
                errors += r.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return LoadResult(concurrency, len(bodies), errors, seconds, latencies)


def drive(url: str, texts: list[str], concurrency: int, body: Callable[[str], dict]) -> LoadResult:
    """Send one request per text, ``concurrency`` at a time; return throughput and latencies."""
    return asyncio.run(_drive(url, [body(t) for t in texts], concurrency))


def median_of(runs: list[LoadResult]) -> LoadResult:
    """The run with the median throughput (figures from one real run, not mixed)."""
    return sorted(runs, key=lambda r: r.rps)[len(runs) // 2]
