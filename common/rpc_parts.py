"""Bodies larger than one bus message, both ways: split into numbered parts.

NATS refuses any message over the server's `max_payload` (1 MB by default).
A body that does not fit is sent as consecutive messages to the same
subject with a `Corral-Parts: i/n` header; NATS keeps one publisher's
messages in order, so the receiver joins them as they come, within a size
cap and a deadline it chooses. Replies use the requester's own inbox, so
parts of two requests never mix.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeout

PARTS = "Corral-Parts"
HEADROOM = 8 * 1024  # headers and protocol framing
MIN_PART = 32 * 1024


class PartsError(Exception):
    """Parts missing, out of order, or more than the receiver accepts."""


class NoResponders(Exception):
    """Nobody subscribes to the subject (the server's 503)."""


def part_size(nc: Client) -> int:
    return max(nc.max_payload - HEADROOM, MIN_PART)


def _split(body: bytes, size: int) -> list[bytes]:
    return [body[i:i + size] for i in range(0, len(body), size)] or [b""]


async def publish_parts(nc: Client, subject: str, body: bytes, *, reply: str = "",
                        headers: dict[str, str] | None = None) -> None:
    parts = _split(body, part_size(nc))
    if len(parts) == 1:
        await nc.publish(subject, body, reply=reply, headers=headers)
        return
    for i, part in enumerate(parts, 1):
        await nc.publish(subject, part, reply=reply,
                         headers={**(headers or {}), PARTS: f"{i}/{len(parts)}"})


def part_of(msg: Msg) -> tuple[int, int] | None:
    """(i, n) of a multi-part message, None for a whole one."""
    raw = (msg.headers or {}).get(PARTS)
    if raw is None:
        return None
    i, _, n = raw.partition("/")
    if not (i.isdigit() and n.isdigit()) or not 1 <= int(i) <= int(n) <= 100_000:
        raise PartsError(f"bad {PARTS} header")
    return int(i), int(n)


def _no_responders(msg: Msg) -> bool:
    return (msg.headers or {}).get("Status") == "503" and not msg.data


async def read_body(sub: Subscription, max_bytes: int, deadline: float) -> Msg:
    """The next whole body on `sub` (joined from parts), as a Msg with the
    first part's headers; raises TimeoutError at `deadline`."""
    first = await _next(sub, deadline)
    if _no_responders(first):
        raise NoResponders()
    where = part_of(first)
    if where is None:
        if len(first.data) > max_bytes:
            raise PartsError("body too large")
        return first
    i, n = where
    if i != 1:
        raise PartsError("body starts mid-way")
    chunks, size = [first.data], len(first.data)
    for expected in range(2, n + 1):
        msg = await _next(sub, deadline)
        if part_of(msg) != (expected, n):
            raise PartsError("parts out of order")
        size += len(msg.data)
        if size > max_bytes:
            raise PartsError("body too large")
        chunks.append(msg.data)
    return Msg(first._client, subject=first.subject, reply=first.reply,
               data=b"".join(chunks), headers=first.headers)


async def _next(sub: Subscription, deadline: float) -> Msg:
    try:
        return await sub.next_msg(timeout=max(deadline - time.monotonic(), 0.001))
    except NatsTimeout:
        raise TimeoutError() from None


@dataclass
class _Partial:
    subject: str
    n: int
    deadline: float
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0


class Assembler:
    """Server side: joins requests sent in parts, keyed by their reply inbox.

    At most `max_pending` unfinished requests and `max_bytes` each; a request
    whose parts stop coming is dropped after `timeout_s`."""

    def __init__(self, max_bytes: int, max_pending: int = 16, timeout_s: float = 30) -> None:
        self.max_bytes = max_bytes
        self.max_pending = max_pending
        self.timeout_s = timeout_s
        self._open: dict[str, _Partial] = {}

    def add(self, msg: Msg) -> bytes | None:
        """The whole body once `msg` completes it; None while parts are missing.
        Raises PartsError for a request that can no longer complete."""
        where = part_of(msg)
        if where is None:
            return msg.data
        i, n = where
        now = time.monotonic()
        for key in [k for k, p in self._open.items() if p.deadline < now]:
            del self._open[key]
        key = msg.reply
        if not key:
            raise PartsError("a request in parts needs a reply subject")
        if i == 1:
            if len(self._open) >= self.max_pending:
                raise PartsError("too many requests in parts at once")
            self._open[key] = _Partial(msg.subject, n, now + self.timeout_s)
        partial = self._open.get(key)
        if partial is None or partial.subject != msg.subject or partial.n != n \
                or len(partial.chunks) != i - 1:
            self._open.pop(key, None)
            raise PartsError("parts out of order")
        partial.chunks.append(msg.data)
        partial.size += len(msg.data)
        if partial.size > self.max_bytes:
            del self._open[key]
            raise PartsError("request too large")
        if i < n:
            return None
        del self._open[key]
        return b"".join(partial.chunks)


async def discard(sub: Subscription) -> None:
    try:
        await sub.unsubscribe()
    except Exception:  # noqa: BLE001 - the connection is already gone
        pass
