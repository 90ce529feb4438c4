"""common.rpc: the one request/reply server loop and its client, on a real nats-server."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client

from common.rpc import Reply, RpcFailure, request, serve
from contracts.rpc import Done, HostAction, HostActionResult, RpcError

pytestmark = pytest.mark.integration
SUBJECT = "corral.rpc.test.action"


class Refused(Exception):
    pass


def _refuse(e: Exception) -> RpcError | None:
    return RpcError(error="conflict", detail=str(e)) if isinstance(e, Refused) else None


@pytest.fixture
async def nc(nats_server) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


async def _server(nc: Client, call, queue: str = "") -> tuple[asyncio.Task, asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.ensure_future(serve(nc, {SUBJECT: (HostAction, call)}, stop,
                                       max_bytes=1024, queue=queue, refuse=_refuse))
    await asyncio.sleep(0.05)  # subscribed
    return task, stop


async def test_serve_answers_refuses_and_never_leaks(nc: Client):
    seen: list[str] = []

    async def call(req: HostAction) -> HostActionResult | Done:
        seen.append(req.host_id)
        if req.host_id == "busy":
            raise Refused("host is busy")
        if req.host_id == "boom":
            raise RuntimeError("secret internal detail")
        return Done()

    task, stop = await _server(nc, call)
    try:
        assert await request(nc, SUBJECT, HostAction(host_id="h1"), Done) == Done()
        with pytest.raises(RpcFailure) as e:
            await request(nc, SUBJECT, HostAction(host_id="busy"), Done)
        assert (e.value.code, e.value.detail) == ("conflict", "host is busy")
        with pytest.raises(RpcFailure) as e:
            await request(nc, SUBJECT, HostAction(host_id="boom"), Done)
        assert e.value.code == "internal" and "secret" not in e.value.detail
        for body in (b'{"host_id": "a.b"}', b"not json", b"x" * 2000):  # bad id, junk, too big
            msg = await nc.request(SUBJECT, body, timeout=2)
            assert RpcError.model_validate_json(msg.data).error == "invalid"
        assert seen == ["h1", "busy", "boom"]  # invalid requests never reach the use case
    finally:
        stop.set()
        await task


async def test_reply_then_runs_after_the_answer_and_stop_waits_for_it(nc: Client):
    events: list[str] = []
    release = asyncio.Event()

    async def follow_up() -> None:
        events.append("then started")
        await release.wait()
        events.append("then done")

    async def call(req: HostAction) -> Reply:
        return Reply(Done(), then=follow_up)

    task, stop = await _server(nc, call)
    # the caller has its answer while the follow-up is still running
    assert await request(nc, SUBJECT, HostAction(host_id="h1"), Done) == Done()
    await asyncio.sleep(0.05)
    assert events == ["then started"]
    stop.set()
    await asyncio.sleep(0.05)
    assert not task.done()  # in-flight work finishes before serve returns
    release.set()
    await asyncio.wait_for(task, 5)
    assert events[-1] == "then done"


async def test_a_queue_group_answers_each_request_once(nc: Client):
    counts = {"a": 0, "b": 0}

    def counting(name: str):
        async def call(req: HostAction) -> Done:
            counts[name] += 1
            return Done()
        return call

    servers = [await _server(nc, counting(n), queue="q") for n in counts]
    try:
        for i in range(20):
            await request(nc, SUBJECT, HostAction(host_id=f"h{i}"), Done)
        assert sum(counts.values()) == 20
    finally:
        for task, stop in servers:
            stop.set()
            await task
