"""`corral.rpc.billing.usage` (core NATS request/reply, queue group `billing`).

Answers from the usage projection after catching it up with the store, so a
reply includes every line item recorded before the request, whichever
instance recorded it.
"""
from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError

from common.logging import log_context
from contracts import rpc
from contracts import subjects as s

from ..adapters.usage_index import UsageIndex
from ..application.metering import Metering

log = logging.getLogger("corral.billing.rpc")
QUEUE = "billing"
MAX_REQUEST = 4096
# 500 items are ~130 KiB: callers pass max_bytes=MAX_REPLY (core NATS allows 1 MiB)
MAX_REPLY = 512 * 1024


async def usage_reply(index: UsageIndex, metering: Metering, body: bytes) -> rpc.RpcModel:
    if len(body) > MAX_REQUEST:
        return rpc.RpcError(error="invalid", detail="request too large")
    try:
        q = rpc.UsageQuery.model_validate_json(body)
    except ValidationError as e:
        fields = ", ".join(".".join(map(str, err["loc"])) or "body" for err in e.errors()[:8])
        return rpc.RpcError(error="invalid", detail=f"invalid UsageQuery: {fields}")
    with log_context(op_id=q.op_id):
        try:
            await asyncio.to_thread(index.catch_up_all, metering.recorder)
        except Exception as e:  # noqa: BLE001 - another instance is projecting: answer anyway
            log.warning("usage projection catch-up failed: %r", e)
        try:
            found, nxt = await asyncio.to_thread(index.page, q.org_id, q.from_, q.to, q.limit,
                                                 q.cursor)
        except ValueError as e:
            return rpc.RpcError(error="invalid", detail=str(e))
        except Exception:  # noqa: BLE001 - never leak internals to the caller
            log.exception("usage query failed")
            return rpc.RpcError(error="internal", detail="internal error")
        return rpc.UsagePage(items=[rpc.UsageItem(**i) for i in found], next_cursor=nxt)


async def serve_usage_rpc(index: UsageIndex, metering: Metering, nc, stop: asyncio.Event) -> None:  # noqa: ANN001
    tasks: set[asyncio.Task] = set()

    async def answer(msg) -> None:  # noqa: ANN001 - nats Msg
        reply = await usage_reply(index, metering, msg.data)
        try:
            await msg.respond(reply.model_dump_json().encode())
        except Exception as e:  # noqa: BLE001 - requester gone or bus down
            log.warning("could not answer usage query: %r", e)

    async def on_msg(msg) -> None:  # noqa: ANN001
        t = asyncio.ensure_future(answer(msg))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    sub = await nc.subscribe(s.RPC_BILLING_USAGE, queue=QUEUE, cb=on_msg)
    try:
        await stop.wait()
    finally:
        await sub.unsubscribe()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def project(index: UsageIndex, metering: Metering, stop: asyncio.Event,
                  every_s: float = 1.0) -> None:
    """Keep the projection current between queries (queries catch up too)."""
    while not stop.is_set():
        try:
            while await asyncio.to_thread(index.catch_up, metering.recorder):
                pass
        except Exception as e:  # noqa: BLE001 - store busy or another instance won: retry
            log.warning("usage projection pass failed: %r", e)
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except asyncio.TimeoutError:
            pass
