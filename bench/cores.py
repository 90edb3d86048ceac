"""Which CPUs the load generator and the server run on in ``bench serve``.

Unpinned, everything shares every core, as a quick run on a laptop does: the load generator takes
cycles from the server, so "served / raw" measures both. Pinned, the load generator has the first
core to itself and the server (and its ONNX Runtime threads, one per core) the others; the raw
session is measured on the server's cores with the same thread count, so served / raw compares
like with like.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """A name, the client's and the server's cores (None: all), and the server's inference threads."""

    name: str
    client: frozenset[int] | None
    server: frozenset[int] | None
    threads: int

    def describe(self) -> str:
        if self.server is None:
            return f"{self.name}: client and server share CPUs {_cpus(_available())}, {self.threads} inference threads"
        return (f"{self.name}: client on CPU {_cpus(self.client)}, server on CPU {_cpus(self.server)}, "
                f"{self.threads} inference thread{'s' if self.threads > 1 else ''}")


def layouts(choice: str) -> tuple[list[Layout], str | None]:
    """The layouts ``--pin`` asks for (``off``, ``on`` or ``both``), and why pinning is skipped if it is."""
    cores = sorted(_available())
    unpinned = Layout("unpinned", None, None, os.cpu_count() or 1)
    if choice == "off":
        return [unpinned], None
    if len(cores) < 2:
        reason = f"pinning needs 2 CPUs or more; this process may use {len(cores)}"
        return ([unpinned] if choice == "both" else []), reason
    pinned = Layout("pinned", frozenset(cores[:1]), frozenset(cores[1:]), len(cores) - 1)
    return ([unpinned, pinned] if choice == "both" else [pinned]), None


@contextmanager
def pinned(cores: frozenset[int] | None) -> Iterator[None]:
    """Run the calling thread, and every thread or process it starts meanwhile, on ``cores``."""
    if cores is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _available() -> set[int]:
    return os.sched_getaffinity(0)


def _cpus(cores: frozenset[int] | set[int] | None) -> str:
    return ",".join(str(c) for c in sorted(cores or ()))
