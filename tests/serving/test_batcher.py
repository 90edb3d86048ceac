"""Batching behaviour: lone requests run at once, concurrent ones share batches, the queue is bounded.

The stand-in model holds each call until the test opens its gate, so which requests run together is
decided by the batcher's rules, never by how fast a shared machine happens to be. The batching window
is an hour wherever a test proves something is *not* waited for: waiting for it would end in the
request's timeout (``GUARD_S``, a hang guard, not a speed limit) instead of an answer.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from refitd.core.errors import NotReadyError, OverloadedError
from refitd.serving.batcher import Batcher, RequestTimeout
from refitd.serving.runtime import Batch

HOUR_MS = 3_600_000
GUARD_S = 30.0


class GatedRuntime:
    """A stand-in model that labels each text with itself and holds every call until ``gate`` is open."""

    version, labels, ready = "v1", ["a", "b"], True

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.started = threading.Event()  # a call has begun
        self.gate = threading.Event()

    def predict(self, texts: list[str]) -> Batch:
        self.calls.append(list(texts))
        self.started.set()
        self.gate.wait(GUARD_S)
        n = len(texts)
        return Batch(list(texts), np.zeros((n, 2), np.float32), np.zeros((n, 4), np.float32))


def _batcher(runtime: GatedRuntime, **kw) -> Batcher:
    opts = {"max_batch_size": 8, "max_wait_ms": HOUR_MS, "queue_size": 64, "timeout_s": GUARD_S}
    return Batcher(lambda: runtime, **(opts | kw))


async def _busy(b: Batcher, runtime: GatedRuntime) -> asyncio.Task:
    """Submit a lone request and return once the model is running it (held at the gate)."""
    first = asyncio.create_task(b.submit(["first"]))
    assert await asyncio.to_thread(runtime.started.wait, GUARD_S)
    return first


async def _queued(b: Batcher, requests: list[list[str]]) -> list[asyncio.Task]:
    """Submit ``requests`` concurrently; return once all of them wait in the queue."""
    tasks = [asyncio.create_task(b.submit(texts)) for texts in requests]
    while b.queued_texts < sum(map(len, requests)):
        await asyncio.sleep(0)
    return tasks


def _queued_behind_one(requests: list[list[str]], **kw) -> tuple[GatedRuntime, list]:
    """``requests`` queued while the model runs a lone first request, then released: the runtime's calls
    and every answer (the first request's first)."""

    async def go():
        runtime = GatedRuntime()
        b = _batcher(runtime, **kw)
        await b.start()
        first = await _busy(b, runtime)
        tasks = await _queued(b, requests)
        runtime.gate.set()
        answers = await asyncio.gather(first, *tasks)
        await b.stop()
        return runtime, answers

    return asyncio.run(go())


def test_lone_request_runs_at_once_not_after_the_window() -> None:
    async def go():
        runtime = GatedRuntime()
        runtime.gate.set()
        b = _batcher(runtime)  # a one-hour window
        await b.start()
        answer = await b.submit(["x"])
        await b.stop()
        return runtime, answer

    runtime, answer = asyncio.run(go())
    assert runtime.calls == [["x"]] and answer.labels == ["x"]


def test_requests_arriving_during_a_batch_form_the_next_one_and_keep_their_rows() -> None:
    async def go():
        runtime = GatedRuntime()
        b = _batcher(runtime)
        await b.start()
        first = await _busy(b, runtime)
        requests = [[f"t{i}", f"u{i}"] for i in range(4)]  # 8 texts: exactly one full batch
        tasks = await _queued(b, requests)
        assert runtime.calls == [["first"]]  # nothing else runs while the model is busy
        runtime.gate.set()
        answers = await asyncio.gather(first, *tasks)
        await b.stop()
        return runtime, requests, answers

    runtime, requests, answers = asyncio.run(go())
    # One call for the four waiting requests, in arrival order; a full batch does not wait out the window.
    assert runtime.calls == [["first"], [t for r in requests for t in r]]
    assert [a.labels for a in answers] == [["first"], *requests]  # each request gets its own rows back
    assert all(a.scores.shape == (len(a.labels), 2) and a.embeddings.shape == (len(a.labels), 4) for a in answers)


def test_a_backlog_is_cut_into_full_batches_of_similar_length() -> None:
    lengths = [7, 3, 11, 1, 9, 5, 12, 2, 8, 4, 10, 6]
    requests = [["w" * n, "w" * n + "!"] for n in lengths]  # 24 texts

    runtime, answers = _queued_behind_one(requests)
    by_length = sorted(requests, key=lambda r: len(r[0]))
    # Three batches of 8, the shortest texts together: 1-4, then 5-8, then 9-12 characters.
    assert runtime.calls[1:] == [[t for r in by_length[i : i + 4] for t in r] for i in (0, 4, 8)]
    assert [a.labels for a in answers[1:]] == requests  # regrouped for the model, answered per request


def test_a_batch_closes_before_its_padding_passes_max_padding() -> None:
    lengths = [42, 10, 100, 11, 40, 12, 10, 41]
    requests = [["w" * n] for n in lengths]

    runtime, answers = _queued_behind_one(requests, max_padding=0.25)
    # 10-12 characters pad to 12 (48 for 43: 12% padding); a 40 would pad them to 200 for 83. Then 40-42,
    # then 100 alone: under the batch size (8), but never more than a quarter of padding in a call.
    assert [[len(t) for t in call] for call in runtime.calls[1:]] == [[10, 10, 11, 12], [40, 41, 42], [100]]
    assert [a.labels for a in answers[1:]] == requests


def test_full_queue_is_refused_and_the_refused_texts_never_run() -> None:
    async def go():
        runtime = GatedRuntime()
        b = _batcher(runtime, queue_size=8)
        await b.start()
        first = await _busy(b, runtime)
        (waiting,) = await _queued(b, [["q"] * 8])
        with pytest.raises(OverloadedError, match="queue full"):
            await b.submit(["refused"])
        runtime.gate.set()
        await asyncio.gather(first, waiting)
        after = await b.submit(["after"])  # room again once the queue drained
        await b.stop()
        return runtime, after

    runtime, after = asyncio.run(go())
    assert runtime.calls == [["first"], ["q"] * 8, ["after"]] and after.labels == ["after"]


def test_slow_answers_time_out_and_timed_out_requests_are_dropped_unrun() -> None:
    async def go():
        runtime = GatedRuntime()
        b = _batcher(runtime, timeout_s=0.05)
        await b.start()
        first = await _busy(b, runtime)  # collected at once, then held at the gate past its timeout
        with pytest.raises(RequestTimeout):
            await first
        with pytest.raises(RequestTimeout):  # still queued behind the held call when its time is up
            await b.submit(["late"])
        runtime.gate.set()
        await b.stop()  # waits until the worker has taken "late" from the queue
        return runtime, b

    runtime, b = asyncio.run(go())
    assert runtime.calls == [["first"]] and b.queued_texts == 0 and b.inflight == 0


def test_stop_ends_the_inference_thread_and_later_requests_are_refused() -> None:
    async def go():
        runtime = GatedRuntime()
        runtime.gate.set()
        b = _batcher(runtime, max_wait_ms=1)
        await b.start()
        assert (await b.submit(["one"])).labels == ["one"]
        names = {t.name for t in threading.enumerate()}
        await b.stop()
        with pytest.raises(NotReadyError, match="stopping"):
            await b.submit(["after"])
        return names, {t.name for t in threading.enumerate()}

    before, after = asyncio.run(go())
    assert "inference" in before and "inference" not in after


def test_past_its_timeout_stop_refuses_what_still_waits_and_ends_after_the_running_call() -> None:
    async def go():
        runtime = GatedRuntime()
        b = _batcher(runtime)
        await b.start()
        first = await _busy(b, runtime)
        waiting = await _queued(b, [["q1"], ["q2"]])
        stopping = asyncio.create_task(b.stop(timeout=0.05))
        await asyncio.sleep(0.2)  # stop()'s time is up; the running call is still held
        with pytest.raises(NotReadyError, match="stopping"):  # refused at once, not queued behind the stop
            await b.submit(["during stop"])
        assert not stopping.done()  # it waits for the running call
        runtime.gate.set()
        await stopping
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        return runtime, await first, outcomes, {t.name for t in threading.enumerate()}

    runtime, first, outcomes, threads = asyncio.run(go())
    assert first.labels == ["first"] and runtime.calls == [["first"]] and "inference" not in threads
    assert all(isinstance(o, NotReadyError) and "stopping" in str(o) for o in outcomes)


def test_a_failing_metrics_hook_costs_no_answer() -> None:
    def broken(size: int, seconds: float) -> None:
        raise RuntimeError("metrics backend gone")

    async def go():
        runtime = GatedRuntime()
        runtime.gate.set()
        b = _batcher(runtime, max_wait_ms=1, on_batch=broken)
        await b.start()
        answers = await asyncio.gather(*(b.submit([f"t{i}"]) for i in range(5)))
        await b.stop()
        return answers

    assert [a.labels for a in asyncio.run(go())] == [[f"t{i}"] for i in range(5)]


def test_a_model_call_that_never_returns_does_not_hold_stop_forever() -> None:
    async def go():
        runtime = GatedRuntime()  # the gate stays shut: the call is held until GUARD_S
        b = _batcher(runtime)
        await b.start()
        first = asyncio.create_task(b.submit(["stuck"]))
        assert await asyncio.to_thread(runtime.started.wait, GUARD_S)
        started = time.monotonic()
        await b.stop(timeout=0.05, grace=0.2)
        waited = time.monotonic() - started
        with pytest.raises(RuntimeError, match="never returned"):  # no second thread beside the stuck one
            await b.start()
        runtime.gate.set()
        first.cancel()
        return waited

    assert asyncio.run(go()) < 5


def test_two_stops_at_once_leave_a_batcher_that_starts_again() -> None:
    async def go():
        runtime = GatedRuntime()
        runtime.gate.set()
        b = _batcher(runtime, max_wait_ms=1)
        await b.start()
        await asyncio.gather(b.stop(), b.stop())
        await b.start()  # no stop marker left over from the second stop
        answer = await b.submit(["again"])
        await b.stop()
        return answer

    assert asyncio.run(go()).labels == ["again"]
