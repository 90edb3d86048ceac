"""Per-key token buckets: a steady rate with a burst allowance (the /v1/feedback limit per source)."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from refitd.core.errors import RefitdError


class RateLimitedError(RefitdError):
    status_code = 429

    def __init__(self, key: str, rate: float, retry_after: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(f"too many labels from source {key!r}: the limit is {rate:g}/s "
                         f"(serving.feedback_rate_per_s); retry in {self.retry_after} s")


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """``take(key)`` spends one token of ``key``'s bucket or raises RateLimitedError with the wait."""

    def __init__(self, rate_per_s: float, burst: int, *, clock=time.monotonic) -> None:  # type: ignore[no-untyped-def]
        self.rate, self.burst, self.clock = rate_per_s, burst, clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        with self._lock:
            now = self.clock()
            bucket = self._buckets.setdefault(key, _Bucket(float(self.burst), now))
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens < 1.0:
                raise RateLimitedError(key, self.rate, (1.0 - bucket.tokens) / self.rate)
            bucket.tokens -= 1.0
