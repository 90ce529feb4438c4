"""Per-org bounds on the operations that reach a host: at most N at once and a
token-bucket rate, per kind (exec, files, snapshot, fork). Per gateway
instance: with K instances an org gets up to K times each bound."""
from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import TooMany
from .rate_limit import RateLimiter

T = TypeVar("T")
KINDS = ("exec", "files", "snapshot", "fork")


@dataclass(frozen=True)
class OpLimit:
    concurrency: int
    per_minute: int


DEFAULT_OP_LIMITS = {"exec": OpLimit(32, 600), "files": OpLimit(16, 600),
                     "snapshot": OpLimit(2, 10), "fork": OpLimit(4, 60)}


def parse_op_limits(text: str) -> dict[str, OpLimit]:
    """`exec=32/600,files=16/600`: concurrency/per-minute by kind, over the defaults."""
    out = dict(DEFAULT_OP_LIMITS)
    for item in filter(None, (p.strip() for p in text.split(","))):
        kind, _, value = item.partition("=")
        conc, _, rate = value.partition("/")
        if kind not in KINDS or not conc.isdigit() or not rate.isdigit() \
                or int(conc) < 1 or int(rate) < 1:
            raise ValueError(f"{item!r}: expected KIND=CONCURRENCY/PER_MINUTE, KIND one of "
                             f"{', '.join(KINDS)}, both at least 1")
        out[kind] = OpLimit(int(conc), int(rate))
    return out


class Slot:
    """One held operation; released once, on exit or by `release()`."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        done, self._release = self._release, None
        if done is not None:
            done()

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a stream dropped before it ever ran
        self.release()


class OpLimits:
    def __init__(self, limits: dict[str, OpLimit],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._rates = {k: RateLimiter(v.per_minute, clock) for k, v in limits.items()}
        self._busy: dict[tuple[str, str], int] = {}

    def acquire(self, org_id: str, kind: str) -> Slot:
        """One of the org's `kind` slots; TooMany if none is free or the rate is
        spent (a call refused for concurrency spends no token)."""
        limit, key = self.limits[kind], (org_id, kind)
        if self._busy.get(key, 0) >= limit.concurrency:
            raise TooMany(f"at most {limit.concurrency} {kind} calls at once per org", 1)
        wait = self._rates[kind].retry_after(org_id)
        if wait:
            raise TooMany(f"{kind} rate limit ({limit.per_minute}/min) reached for this org",
                          wait)
        self._busy[key] = self._busy.get(key, 0) + 1
        return Slot(lambda: self._free(key))

    def _free(self, key: tuple[str, str]) -> None:
        left = self._busy[key] - 1
        if left:
            self._busy[key] = left
        else:
            del self._busy[key]

    def in_use(self, org_id: str, kind: str) -> int:
        return self._busy.get((org_id, kind), 0)


async def holding(slot: Slot, items: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    """`items`, with `slot` held until they end or are closed (a stream's life)."""
    with slot:
        try:
            async for item in items:
                yield item
        finally:
            await items.aclose()
