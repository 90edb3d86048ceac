"""Dynamic batching: requests join a bounded queue; one worker runs them in batches.

A batch closes at ``max_batch_size`` texts or ``max_wait_ms`` after its first
request, whichever comes first; a request that finds nobody else waiting runs at once
(adaptive batching: batches form from the requests that arrive while one runs). Waiting texts are sorted by length and cut into batches of similar length
(``serving.max_padding``), so short texts are not padded to a long one. Each batch runs on the runtime that was
current when it started, so a hot swap never changes a batch midway.

Requests are validated before they are queued (serving/limits.py: the texts the tokenizer and the
database cannot take are refused there). If a batch still fails, it is split in halves and each is
retried, down to single requests: a request that fails alone gets its error, its neighbours their
answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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


def _expire(future: asyncio.Future[Answer], seconds: float) -> None:
    if not future.done():
        future.set_exception(RequestTimeout(seconds))


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
        self.queued_texts = 0
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task[None] | None = None
        self.inflight = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="batcher")

    async def stop(self, timeout: float = 10.0) -> None:
        """Finish what is queued (up to ``timeout``), then stop the worker."""
        deadline = time.monotonic() + timeout
        while (self.queued_texts or self.inflight) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def submit(self, texts: list[str]) -> Answer:
        """Queue ``texts`` and wait for their answer; OverloadedError when the queue is full."""
        if not texts:
            raise ValueError("submit needs at least one text")  # the API answers 422 before it gets here
        if self.current_runtime() is None:
            raise NotReadyError()
        if self.queued_texts + len(texts) > self.queue_size:
            raise OverloadedError(
                f"queue full ({self.queued_texts} texts waiting, limit {self.queue_size}); retry shortly", retry_after=1
            )
        loop = asyncio.get_running_loop()
        item = _Item(texts, loop.create_future())
        self.queued_texts += len(texts)
        self._queue.put_nowait(item)
        # A timer, not wait_for: no task per request. A request that times out, or whose caller goes
        # away (cancelled), leaves a done future that the worker skips.
        timer = loop.call_later(self.timeout_s, _expire, item.future, self.timeout_s)
        try:
            return await item.future
        finally:
            timer.cancel()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            self.queued_texts -= sum(len(i.texts) for i in items)
            live = [i for i in items if not i.future.done()]
            if not live:
                continue
            self.inflight += 1
            try:
                for group in self._groups(live):
                    await self._run(loop, group)
            finally:
                self.inflight -= 1

    async def _collect(self) -> list[_Item]:
        first = await self._queue.get()
        items, count = [first], len(first.texts)
        if self._queue.empty():
            # A lone request runs at once: under load, requests pile up while a batch runs, so
            # batches fill without waiting; the window below only tops up a batch already forming.
            return items
        deadline = time.perf_counter() + self.max_wait
        while count < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0 and self._queue.empty():
                break
            try:
                item = self._queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self._queue.get(), remaining)
            except (TimeoutError, asyncio.QueueEmpty):
                break
            items.append(item)
            count += len(item.texts)
        # More waiting than one batch holds: take a few batches' worth and group them by length.
        while not self._queue.empty() and count < 4 * self.max_batch_size:
            item = self._queue.get_nowait()
            items.append(item)
            count += len(item.texts)
        return items

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

    async def _run(self, loop: asyncio.AbstractEventLoop, group: list[_Item]) -> None:
        """Run one batch; requests that fail even alone get an error that says whose fault it was."""
        runtime = self.current_runtime()
        failed = await self._attempt(loop, runtime, group)
        if not failed:
            return
        # Failures beside answered neighbours, or while the model still answers its smoke texts, are the
        # request's own (422); a model that fails everything is the server's (503).
        own = len(failed) < len(group) or await self._model_answers(loop, runtime)
        for item, exc in failed:
            if not isinstance(exc, RefitdError):
                exc = UnprocessableError(f"the model could not process this request ({type(exc).__name__}: {exc})") \
                    if own else ModelFailedError(exc)
            if not item.future.done():
                item.future.set_exception(exc)

    async def _attempt(self, loop: asyncio.AbstractEventLoop, runtime: OnnxClassifier | None,
                       group: list[_Item]) -> list[tuple[_Item, Exception]]:
        """Answer ``group`` in one session call; if it fails, split it in halves and retry each."""
        texts = [t for item in group for t in item.texts]
        start = time.perf_counter()
        try:
            if runtime is None:
                raise NotReadyError()
            batch: Batch = await loop.run_in_executor(self._executor, runtime.predict, texts)
        except Exception as exc:  # noqa: BLE001 - every waiting caller must hear about it
            if len(group) == 1 or isinstance(exc, NotReadyError):
                return [(item, exc) for item in group]
            log.warning("a batch of %d requests failed (%s); retrying its halves", len(group), type(exc).__name__)
            half = len(group) // 2
            return await self._attempt(loop, runtime, group[:half]) + await self._attempt(loop, runtime, group[half:])
        seconds = time.perf_counter() - start
        if self.on_batch is not None:
            self.on_batch(len(texts), seconds)
        offset = 0
        for item in group:
            n = len(item.texts)
            if not item.future.done():
                latency = (time.perf_counter() - item.enqueued) * 1000.0
                item.future.set_result(Answer(runtime, batch.labels[offset : offset + n], batch.scores[offset : offset + n],
                                              batch.embeddings[offset : offset + n], latency))
            offset += n
        return []

    async def _model_answers(self, loop: asyncio.AbstractEventLoop, runtime: OnnxClassifier | None) -> bool:
        if runtime is None:
            return False
        try:
            await loop.run_in_executor(self._executor, runtime.predict, SMOKE_TEXTS)
        except Exception:  # noqa: BLE001 - a model that cannot answer its smoke texts is broken
            log.exception("model %s fails its smoke texts", runtime.version)
            return False
        return True
