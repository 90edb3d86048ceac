"""Dynamic batching: requests join a bounded queue; one inference thread runs them in batches.

A batch closes at ``max_batch_size`` texts or ``max_wait_ms`` after its first
request, whichever comes first; a request that finds nobody else waiting runs at once
(adaptive batching: batches form from the requests that arrive while one runs). Waiting texts are sorted by length and cut into batches of similar length
(``serving.max_padding``), so short texts are not padded to a long one. Each batch runs on the runtime that was
current when it started, so a hot swap never changes a batch midway.

The inference thread owns the queue: a request is put on it from the event loop (which wakes the thread
directly) and its answer comes back in one ``call_soon_threadsafe`` per batch. Against an asyncio task that
collects batches and hands each to an executor, that is two event-loop turns and an executor future fewer
per request: a lone request now costs what a bare ``run_in_executor`` hand-off costs, 0.04–0.17 ms less than
before (``python -m refitd.bench hop``; README, Benchmarks).

Requests are validated before they are queued (serving/limits.py: the texts the tokenizer and the
database cannot take are refused there). If a batch still fails, it is split in halves and each is
retried, down to single requests: a request that fails alone, and again on one more try while the model
answers others, gets its error (422), its neighbours their answers.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from refitd.core.errors import NotReadyError, OverloadedError, RefitdError, UnprocessableError
from refitd.serving.runtime import SMOKE_TEXTS, Batch, OnnxClassifier

log = logging.getLogger(__name__)


class RequestTimeout(RefitdError):
    status_code = 504

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer within {seconds:g} s (serving.request_timeout_s); the server is overloaded")


class ModelFailedError(RefitdError):
    status_code = 503

    def __init__(self, cause: Exception) -> None:
        super().__init__(f"the served model failed ({type(cause).__name__}: {cause}); retry shortly")


@dataclass
class Answer:
    runtime: OnnxClassifier
    labels: list[str]
    scores: np.ndarray
    embeddings: np.ndarray
    latency_ms: float


@dataclass
class _Item:
    texts: list[str]
    future: asyncio.Future[Answer]
    enqueued: float = field(default_factory=time.perf_counter)


Outcome = tuple[asyncio.Future[Answer], Answer | BaseException]  # a request's future and what settles it


def _expire(future: asyncio.Future[Answer], seconds: float) -> None:
    if not future.done():
        future.set_exception(RequestTimeout(seconds))


def _deliver(outcomes: list[Outcome]) -> None:
    """From the inference thread: settle ``outcomes`` on their event loop, one wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for future, outcome in outcomes:
        by_loop.setdefault(future.get_loop(), []).append((future, outcome))
    for loop, part in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, part)
        except RuntimeError:  # the loop is closed: nobody waits for these answers any more
            log.warning("%d answers finished after their event loop closed", len(part))


def _settle(outcomes: list[Outcome]) -> None:
    """On the event loop: hand each waiting request its answer or error (a request that timed out or whose
    caller went away already has its outcome and is skipped)."""
    for future, outcome in outcomes:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class Batcher:
    def __init__(
        self,
        current_runtime: Callable[[], OnnxClassifier | None],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        queue_size: int,
        timeout_s: float,
        max_padding: float = float("inf"),
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.current_runtime = current_runtime
        self.max_batch_size, self.max_wait, self.max_padding = max_batch_size, max_wait_ms / 1000.0, max_padding
        self.queue_size, self.timeout_s = queue_size, timeout_s
        self.on_batch = on_batch
        self.queued_texts = 0  # texts on the queue, not yet taken by the inference thread
        self.inflight = 0  # batches the inference thread has taken and not yet answered
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._counts = threading.Lock()  # queued_texts and inflight change on both threads
        self._thread: threading.Thread | None = None
        self._stopping = False  # stop() has begun: new requests are refused
        self._dropping = False  # stop()'s time is up: what is still queued is refused, not run

    async def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the batcher is already started (or a stopped one's model call never returned)")
        self._stopping = self._dropping = False
        self._queue = queue.SimpleQueue()  # nothing left from an earlier run, stop marker included
        self._thread = threading.Thread(target=self._work, name="inference", daemon=True)
        self._thread.start()

    async def stop(self, timeout: float = 10.0, grace: float = 10.0) -> None:
        """Refuse new requests, answer what is queued (up to ``timeout``; past it what still waits gets 503),
        then end the inference thread once its current model call returns (waiting ``grace`` more seconds
        for it: a model call that never returns must not hold the process, and its prediction log, forever)."""
        with self._counts:
            if self._stopping or self._thread is None:
                return  # another stop() has it in hand, or there is nothing to stop
            self._stopping = True  # under the lock submit() queues under: nothing lands behind the marker
        deadline = time.monotonic() + timeout
        while (self.queued_texts or self.inflight) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self._dropping = True
        thread = self._thread
        self._queue.put(None)
        await asyncio.to_thread(thread.join, max(0.0, deadline - time.monotonic()) + grace)
        if thread.is_alive():  # left as it is (a daemon thread): start() refuses while it runs
            log.error("the inference thread is still in a model call %.0f s after stop; leaving it", timeout + grace)
            return
        self._thread = None

    async def submit(self, texts: list[str]) -> Answer:
        """Queue ``texts`` and wait for their answer; OverloadedError when the queue is full."""
        if not texts:
            raise ValueError("submit needs at least one text")  # the API answers 422 before it gets here
        if self.current_runtime() is None:
            raise NotReadyError()
        loop = asyncio.get_running_loop()
        item = _Item(texts, loop.create_future())
        with self._counts:  # stop() sets _stopping under this lock: a request is queued before its marker or refused
            if self._thread is None or self._stopping:
                raise NotReadyError("the server is not started or is stopping")
            if self.queued_texts + len(texts) > self.queue_size:
                raise OverloadedError(
                    f"queue full ({self.queued_texts} texts waiting, limit {self.queue_size}); retry shortly",
                    retry_after=1)
            self.queued_texts += len(texts)
            self._queue.put(item)
        # A timer, not wait_for: no task per request. A request that times out, or whose caller goes
        # away (cancelled), leaves a done future that the inference thread skips.
        timer = loop.call_later(self.timeout_s, _expire, item.future, self.timeout_s)
        try:
            return await item.future
        finally:
            timer.cancel()

    # the inference thread ------------------------------------------------------------

    def _work(self) -> None:
        stopping = False
        while not stopping:
            items, stopping = self._collect()
            with self._counts:  # one step: stop() never sees the batch neither queued nor in flight
                self.queued_texts -= sum(len(i.texts) for i in items)
                self.inflight += 1
            try:
                for group in self._groups(items) if items else []:
                    # a done future timed out or lost its caller (checked per batch: earlier batches take time);
                    # read from this thread it can only be stale towards "not done", and then the answer is
                    # dropped on the loop
                    group = [i for i in group if not i.future.done()]
                    if not group:
                        continue
                    if self._dropping:
                        _deliver([(i.future, NotReadyError("the server is stopping")) for i in group])
                        continue
                    try:
                        self._run(group)
                    except Exception as exc:  # noqa: BLE001 - one batch's failure is its own callers' alone
                        log.exception("the inference thread failed a batch of %d requests", len(group))
                        _deliver([(i.future, ModelFailedError(exc)) for i in group])
            except Exception as exc:  # noqa: BLE001 - the thread outlives anything a collected set does to it
                log.exception("the inference thread failed %d collected requests", len(items))
                _deliver([(i.future, ModelFailedError(exc)) for i in items])
            finally:
                with self._counts:
                    self.inflight -= 1

    def _collect(self) -> tuple[list[_Item], bool]:
        """The next batch's requests (blocking for the first) and whether stop() asked the thread to end."""
        first = self._queue.get()
        if first is None:
            return [], True
        items, count = [first], len(first.texts)
        if self._queue.empty():
            # A lone request runs at once: under load, requests pile up while a batch runs, so
            # batches fill without waiting; the window below only tops up a batch already forming.
            return items, False
        deadline = time.perf_counter() + self.max_wait
        while True:
            # up to a batch within the window; past that, a few batches' worth of what already waits
            # (grouped by length below)
            remaining = deadline - time.perf_counter()
            if count >= 4 * self.max_batch_size or (count >= self.max_batch_size and self._queue.empty()):
                break
            try:
                if count < self.max_batch_size and remaining > 0:
                    item = self._queue.get(timeout=remaining)
                else:
                    item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return items, True
            items.append(item)
            count += len(item.texts)
        return items, False

    def _groups(self, items: list[_Item]) -> list[list[_Item]]:
        """Requests in batches of ≤ max_batch_size texts, shortest texts together, each batch closed before
        its padding would pass ``max_padding`` of what it holds (characters stand in for tokens): every text
        of a batch is padded to its longest, and that padding is work the model does for nothing."""
        if len(items) == 1:
            return [items]
        ordered = sorted(items, key=lambda i: max(map(len, i.texts), default=0))
        groups: list[list[_Item]] = []
        current: list[_Item] = []
        count = chars = longest = 0
        for item in ordered:
            n, size, top = len(item.texts), sum(map(len, item.texts)), max(map(len, item.texts), default=0)
            wider = max(longest, top) * (count + n)  # the batch's padded size with this request in it
            if current and (count + n > self.max_batch_size or wider > (1 + self.max_padding) * (chars + size)):
                groups.append(current)
                current, count, chars, longest = [], 0, 0, 0
            current.append(item)
            count, chars, longest = count + n, chars + size, max(longest, top)
        groups.append(current)
        return groups

    def _run(self, group: list[_Item]) -> None:
        """Run one batch and answer it; requests that fail even alone get an error that says whose fault it was."""
        runtime = self.current_runtime()
        failed = self._attempt(runtime, group)
        if not failed:
            return
        # Failures beside answered neighbours, or while the model still answers its smoke texts, are the
        # request's own (422); a model that fails everything is the server's (503).
        own = len(failed) < len(group) or self._model_answers(runtime)
        if own:
            # Each of these failed alone while the model answers others: one more try each, so that a
            # passing fault (memory, a device hiccup) is answered, not told it is the request's fault. Not
            # for a request nobody waits for any more, nor for an error that already says whose it is.
            failed = [outcome for item, exc in failed
                      for outcome in ([(item, exc)] if isinstance(exc, RefitdError) or item.future.done()
                                      else self._attempt(runtime, [item]))]
        errors: list[Outcome] = []
        for item, exc in failed:
            if not isinstance(exc, RefitdError):
                exc = UnprocessableError(f"the model could not process this request ({type(exc).__name__}: {exc})") \
                    if own else ModelFailedError(exc)
            errors.append((item.future, exc))
        _deliver(errors)

    def _attempt(self, runtime: OnnxClassifier | None, group: list[_Item]) -> list[tuple[_Item, Exception]]:
        """Answer ``group`` in one session call (its callers hear at once); if the call fails, split the group
        in halves and retry each. Returns the requests that failed alone."""
        texts = [t for item in group for t in item.texts]
        start = time.perf_counter()
        try:
            if runtime is None:
                raise NotReadyError()
            batch: Batch = runtime.predict(texts)
        except Exception as exc:  # noqa: BLE001 - every waiting caller must hear about it
            if len(group) == 1 or isinstance(exc, NotReadyError):
                return [(item, exc) for item in group]
            log.warning("a batch of %d requests failed (%s); retrying its halves", len(group), type(exc).__name__)
            half = len(group) // 2
            return self._attempt(runtime, group[:half]) + self._attempt(runtime, group[half:])
        seconds = time.perf_counter() - start
        answers: list[Outcome] = []
        offset, now = 0, time.perf_counter()
        for item in group:
            n = len(item.texts)
            answers.append((item.future, Answer(runtime, batch.labels[offset : offset + n], batch.scores[offset : offset + n],
                                                batch.embeddings[offset : offset + n], (now - item.enqueued) * 1000.0)))
            offset += n
        _deliver(answers)
        if self.on_batch is not None:
            try:
                self.on_batch(len(texts), seconds)
            except Exception:  # noqa: BLE001 - metrics never cost an answer
                log.exception("recording a batch's metrics failed")
        return []

    def _model_answers(self, runtime: OnnxClassifier | None) -> bool:
        if runtime is None:
            return False
        try:
            runtime.predict(SMOKE_TEXTS)
        except Exception:  # noqa: BLE001 - a model that cannot answer its smoke texts is broken
            log.exception("model %s fails its smoke texts", runtime.version)
            return False
        return True
