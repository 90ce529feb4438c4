"""The sandbox stream, followed with an ordered (ephemeral) JetStream
consumer: server-side filters, flow control, and a gap-free restart from
the last sequence seen if delivery ever skips."""
from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

STREAM = "CORRAL_SANDBOX"
PENDING_BYTES = 8 << 20  # held for a slow client; beyond, the consumer restarts at the gap


class JetStreamEvents:
    def __init__(self, js: JetStreamContext, stream: str = STREAM) -> None:
        self.js = js
        self.stream = stream

    async def follow(self, subjects: list[str], after: int | None, since: datetime | None,
                     idle_s: float) -> AsyncIterator[tuple[int, str, bytes] | None]:
        if after is not None:
            start = dict(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1)
        elif since is not None:
            start = dict(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since)
        else:
            start = dict(deliver_policy=DeliverPolicy.NEW)
        sub = await self.js.subscribe(
            subjects[0], stream=self.stream, ordered_consumer=True,
            config=ConsumerConfig(filter_subjects=subjects, **start),  # type: ignore[arg-type]
            pending_bytes_limit=PENDING_BYTES)
        try:
            while True:
                try:
                    m = await sub.next_msg(timeout=idle_s)
                except (NatsTimeout, TimeoutError):
                    yield None
                    continue
                yield m.metadata.sequence.stream, m.subject, m.data
        finally:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the connection is already gone
                pass
