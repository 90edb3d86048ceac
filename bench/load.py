"""A closed-loop load generator and the figures benchmarks print."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit


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


def _connection(url: str) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=60), parts.path or "/"


def drive(url: str, texts: list[str], concurrency: int, body: Callable[[str], dict]) -> LoadResult:
    """Send one request per text, ``concurrency`` at a time (closed loop); return throughput and latencies.

    The client is as lean as Python allows, so that what it measures is the server: bodies are encoded
    before the clock starts, and each of ``concurrency`` threads keeps one HTTP/1.1 connection alive and
    sends with the standard library's ``http.client`` (a request costs the client ~0.1 ms of CPU, about
    a sixth of an async httpx client's, which at concurrency 1 put ~0.6 ms of its own into every
    latency). A status other than 200 counts as an error, and its latency is left out of the percentiles.
    """
    bodies = [json.dumps(body(t)).encode() for t in texts]
    next_body = iter(range(len(bodies))).__next__
    take = threading.Lock()
    latencies: list[float] = []
    errors = [0]
    headers = {"Content-Type": "application/json"}

    def worker() -> None:
        conn, path = _connection(url)
        mine: list[float] = []
        bad = 0
        try:
            while True:
                with take:
                    try:
                        i = next_body()
                    except StopIteration:
                        break
                start = time.perf_counter()
                try:
                    conn.request("POST", path, body=bodies[i], headers=headers)
                    response = conn.getresponse()
                    response.read()
                    ok = response.status == 200
                except (OSError, http.client.HTTPException):
                    ok = False
                    conn.close()
                    conn, path = _connection(url)
                if ok:  # a fast refusal is not a fast answer: errors count, their latencies do not
                    mine.append((time.perf_counter() - start) * 1000)
                else:
                    bad += 1
        finally:
            conn.close()
            with take:
                latencies.extend(mine)
                errors[0] += bad

    threads = [threading.Thread(target=worker, name=f"load-{i}") for i in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return LoadResult(concurrency, len(bodies), errors[0], time.perf_counter() - start, latencies)


def median_of(runs: list[LoadResult]) -> LoadResult:
    """The run with the median throughput (figures from one real run, not mixed)."""
    return sorted(runs, key=lambda r: r.rps)[len(runs) // 2]
