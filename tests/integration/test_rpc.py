"""common.rpc: the one request/reply server loop and its client, on a real nats-server."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client

from pydantic import Field

from common.rpc import Reply, RpcFailure, open_stream, request, serve
from common.rpc_parts import PARTS, Assembler, PartsError
from contracts.rpc import (Done, HostAction, HostActionResult, HostExecChunk, HostExecResult,
                           HostExecStream, RpcError, RpcModel)
from contracts.subjects import host_rpc_subject

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

    async def follow_up(send) -> None:
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


class Blob(RpcModel):
    data: str = Field(max_length=8 << 20)


BLOB = "corral.rpc.test.blob"


async def test_bodies_larger_than_a_bus_message_travel_in_parts(nc: Client):
    """A 3 MiB request and a 3 MiB answer on a server whose max_payload is 1 MiB."""
    assert nc.max_payload == 1 << 20
    got: list[int] = []

    async def echo(req: Blob) -> Blob:
        got.append(len(req.data))
        return Blob(data=req.data[::-1])

    stop = asyncio.Event()
    task = asyncio.ensure_future(serve(nc, {BLOB: (Blob, echo)}, stop, max_bytes=4 << 20))
    await asyncio.sleep(0.05)
    try:
        big = "".join(chr(97 + i % 26) for i in range(3 << 20))
        out = await request(nc, BLOB, Blob(data=big), Blob, timeout=10, max_bytes=4 << 20)
        assert out.data == big[::-1] and got == [3 << 20]
        with pytest.raises(RpcFailure) as e:  # the caller's cap holds for joined parts
            await request(nc, BLOB, Blob(data=big), Blob, timeout=10, max_bytes=2 << 20)
        assert e.value.code == "internal"
        with pytest.raises(RpcFailure) as e:  # and so does the server's
            await request(nc, BLOB, Blob(data=big + big), Blob, timeout=10, max_bytes=8 << 20)
        assert e.value.code == "invalid"
        with pytest.raises(RpcFailure) as e:
            await request(nc, "corral.rpc.test.nobody", Blob(data=big), Blob, timeout=5)
        assert e.value.code == "unavailable"
    finally:
        stop.set()
        await task


async def test_a_stream_follows_the_answer_on_the_same_inbox(nc: Client):
    async def call(req: HostAction) -> Reply:
        async def chunks(send) -> None:
            for i in range(3):
                await send(Blob(data=f"{i}" * (600 << 10)))  # ~1.8 MiB in all, in parts
        return Reply(Done(), then=chunks)

    task, stop = await _server(nc, call)
    try:
        stream = await open_stream(nc, SUBJECT, HostAction(host_id="h1"), 5, 1024)
        assert await stream.answer(Done) == Done()
        deadline = time.monotonic() + 5
        seen = [Blob.model_validate_json(await stream.next(deadline, 1 << 20)).data[:1]
                for _ in range(3)]
        assert seen == ["0", "1", "2"]
        with pytest.raises(TimeoutError):
            await stream.next(time.monotonic() + 0.2)
        await stream.close()
    finally:
        stop.set()
        await task


async def test_a_reader_too_slow_for_its_stream_is_told_output_was_lost(nc: Client):
    """The gateway holds at most STREAM_PENDING of a stream; a reader further
    behind gets OutputLost, never a silent gap, and its memory stays bounded."""
    from services.api_gateway.adapters.host_client import STREAM_PENDING, HostClient, OutputLost
    subject = host_rpc_subject("h-slow", "exec.stream")
    sent = asyncio.Event()

    async def call(req: HostExecStream) -> Reply:
        async def chunks(send) -> None:
            n = 2 * STREAM_PENDING // (512 << 10) + 4
            for i in range(n):
                await send(HostExecChunk(stream="stdout", seq=i, data="x" * (512 << 10)))
            await send(HostExecChunk(stream="exit", seq=n, result=HostExecResult(
                exit_code=0, stdout="", stderr="", duration_ms=1, timed_out=False,
                truncated=False)))
            await nc.flush()
            sent.set()
        return Reply(Done(), then=chunks)

    stop = asyncio.Event()
    task = asyncio.ensure_future(serve(nc, {subject: (HostExecStream, call)}, stop,
                                       max_bytes=1 << 20))
    await asyncio.sleep(0.05)
    reader = await nats.connect(nc.connected_url.geturl())
    try:
        chunks = await HostClient(reader).exec_stream("h-slow", HostExecStream(
            sandbox_id="sbx_a", org_id="org_a", op_id="op_1", cmd=["yes"]))
        await asyncio.wait_for(sent.wait(), 10)  # everything sent before a chunk is read
        await asyncio.sleep(0.3)
        got = 0
        with pytest.raises(OutputLost):
            async for _ in chunks:
                got += 1
        assert got < 2 * STREAM_PENDING // (512 << 10)
    finally:
        await reader.close()
        stop.set()
        await task


def test_assembler_bounds_what_it_holds():
    from nats.aio.msg import Msg

    def part(i: int, n: int, reply: str = "_INBOX.a", data: bytes = b"x" * 10) -> Msg:
        return Msg(None, subject="s", reply=reply, data=data,  # type: ignore[arg-type]
                   headers={PARTS: f"{i}/{n}"})

    a = Assembler(max_bytes=25, max_pending=1)
    assert a.add(part(1, 2)) is None and a.add(part(2, 2)) == b"x" * 20
    assert a.add(part(1, 3)) is None
    with pytest.raises(PartsError):  # a second request in parts while one is open
        a.add(part(1, 2, reply="_INBOX.b"))
    a.add(part(2, 3))
    with pytest.raises(PartsError):  # 30 bytes > 25
        a.add(part(3, 3))
    with pytest.raises(PartsError):  # a part with no beginning
        a.add(part(2, 2))
