"""Batching behaviour: lone requests run at once, concurrent ones share batches, the queue is bounded."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from refitd.core.errors import OverloadedError
from refitd.serving.batcher import Batcher, RequestTimeout
from refitd.serving.runtime import Batch


class SlowRuntime:
    """A stand-in model whose cost is a fixed time per call, so batching is visible."""

    version, labels, ready = "v1", ["a", "b"], True

    def __init__(self, seconds: float) -> None:
        self.seconds, self.calls = seconds, []

    def predict(self, texts: list[str]) -> Batch:
        self.calls.append(list(texts))
        time.sleep(self.seconds)
        n = len(texts)
        return Batch(["a"] * n, np.tile([0.9, 0.1], (n, 1)).astype(np.float32), np.zeros((n, 4), np.float32))


def _batcher(runtime, **kw) -> Batcher:
    opts = dict(max_batch_size=8, max_wait_ms=20, queue_size=64, timeout_s=5)
    return Batcher(lambda: runtime, **(opts | kw))


def test_lone_request_is_not_held_for_the_window() -> None:
    async def go() -> float:
        runtime = SlowRuntime(0.0)
        b = _batcher(runtime, max_wait_ms=500)
        await b.start()
        start = time.perf_counter()
        await b.submit(["x"])
        took = time.perf_counter() - start
        await b.stop()
        return took

    assert asyncio.run(go()) < 0.25


def test_concurrent_requests_share_batches_and_keep_their_rows() -> None:
    async def go():
        runtime = SlowRuntime(0.05)
        b = _batcher(runtime)
        await b.start()
        answers = await asyncio.gather(*(b.submit([f"t{i}", f"u{i}"]) for i in range(12)))
        await b.stop()
        return runtime, answers

    runtime, answers = asyncio.run(go())
    assert all(len(a.labels) == 2 for a in answers)
    assert max(len(c) for c in runtime.calls) > 2 and all(len(c) <= 8 for c in runtime.calls)
    assert sorted(t for c in runtime.calls for t in c) == sorted([f"t{i}" for i in range(12)] + [f"u{i}" for i in range(12)])


def test_full_queue_is_refused_and_slow_answers_time_out() -> None:
    async def go():
        b = _batcher(SlowRuntime(0.3), queue_size=8, timeout_s=0.1)
        await b.start()
        first = asyncio.create_task(b.submit(["a"] * 8))
        await asyncio.sleep(0)
        with pytest.raises(OverloadedError):
            await b.submit(["b"])
        with pytest.raises(RequestTimeout):
            await first
        await b.stop()

    asyncio.run(go())
