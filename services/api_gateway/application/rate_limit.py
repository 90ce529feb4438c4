"""Per-org create rate: a token bucket per gateway instance, injectable clock."""
from __future__ import annotations

import math
import time
from collections.abc import Callable


class RateLimiter:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.rate = per_minute / 60.0
        self.burst = float(per_minute)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # org -> (tokens, at)

    def take(self, org_id: str, n: int = 1) -> float:
        """0 if `n` creates are allowed now (all or none), else seconds until they are."""
        now = self.clock()
        tokens, at = self._buckets.get(org_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= n:
            self._buckets[org_id] = (tokens - n, now)
            return 0.0
        self._buckets[org_id] = (tokens, now)
        return (n - tokens) / self.rate

    def retry_after(self, org_id: str, n: int = 1) -> int:
        wait = self.take(org_id, n)
        return 0 if wait == 0 else max(1, math.ceil(wait))
