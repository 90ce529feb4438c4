"""The host's side of the guest channel against a hostile guest: a fake agent
on the unix socket that floods, sends malformed and deeply nested frames,
lies about request ids, and stops reading. The real AgentClient must stay
within its memory, end every call by its deadline and never hang on close."""
from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from guest import protocol as P
from services.host_agent.adapters.qemu.agent_client import MAX_DROPPED, AgentClient
from services.host_agent.adapters.qemu.errors import AgentUnavailable, GuestError
from services.host_agent.application.ports import ExecRequest

pytestmark = pytest.mark.integration
Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def requests(r: asyncio.StreamReader) -> AsyncIterator[tuple[dict, bytes]]:
    dec = P.Decoder()
    while data := await r.read(1 << 16):
        for frame in dec.feed(data):
            yield frame


async def guest(tmp_path: Path, behave: Behaviour) -> tuple[AgentClient, asyncio.Server]:
    path = str(tmp_path / "agent.sock")
    server = await asyncio.start_unix_server(behave, path)
    client = await AgentClient.connect(path)
    client.exec_grace_s = 2.0
    return client, server


def frame(header: dict | list | str, payload: bytes = b"") -> bytes:
    h = json.dumps(header).encode() if not isinstance(header, str) else header.encode()
    return P.PREFIX.pack(P.MAGIC, P.VERSION, len(h), len(payload)) + h + payload


async def test_a_flood_stays_within_memory_and_the_cap(tmp_path: Path):
    """The guest ignores output_cap and streams 64 KiB frames as fast as it can."""
    sent = {"bytes": 0}

    async def flood(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        async for h, _ in requests(r):
            if h.get("op") == "exec":
                chunk = os.urandom(64 << 10)
                try:
                    while True:
                        w.write(P.encode({"id": h["id"], "type": "out", "stream": "stdout"},
                                         chunk))
                        sent["bytes"] += len(chunk)
                        await w.drain()
                except (ConnectionError, OSError):
                    return
    client, server = await guest(tmp_path, flood)
    before = rss_mib()
    got: list[int] = []

    async def on_chunk(c) -> None:
        got.append(len(c.data))
    t0 = time.monotonic()
    with pytest.raises(AgentUnavailable):  # cut off once it overran the cap by 256 MiB
        await client.exec(ExecRequest(["yes"], timeout_s=30, output_cap=1 << 20), on_chunk)
    assert time.monotonic() - t0 < 10  # long before its deadline
    assert sum(got) == 1 << 20  # the cap, enforced here
    assert sent["bytes"] > MAX_DROPPED  # it really flooded...
    assert rss_mib() - before < 64  # ...and the host kept its memory
    assert client.closed
    await asyncio.wait_for(client.close(), 2)
    server.close()


async def test_malformed_nested_and_lying_frames_are_survived(tmp_path: Path):
    async def liar(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        async for h, _ in requests(r):
            rid = h["id"]
            w.write(frame("[" * 30_000 + "]" * 30_000))  # nested past any recursion limit
            w.write(frame('{"id": 1, "type": "ok"'))  # not JSON
            w.write(frame([rid, "ok"]))  # not an object
            w.write(frame({"id": [rid], "type": "ok"}))  # a list as id
            w.write(frame({"id": rid + 1000, "type": "ok"}, b"x" * 1000))  # nobody asked
            w.write(frame({"id": True, "type": "ok"}))  # a bool is no id
            w.write(P.encode({"id": rid, "type": "hello", "v": P.VERSION}))
            w.write(P.encode({"id": rid, "type": "error", "code": "EIO"}))  # after the answer
            await w.drain()
    client, server = await guest(tmp_path, liar)
    for _ in range(3):  # the reader lives on: every request is answered
        assert (await client.handshake(5))["v"] == P.VERSION
    assert not client.closed
    await client.close()
    server.close()


async def test_too_many_unreadable_frames_cut_the_peer_off(tmp_path: Path):
    async def junk(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for _ in range(P.MAX_BAD_FRAMES + 10):
            w.write(frame("not json"))
        await w.drain()
        await asyncio.sleep(30)
    client, server = await guest(tmp_path, junk)
    with pytest.raises(AgentUnavailable):
        await client.request({"op": "ping"}, timeout=5)
    assert client.closed
    server.close()


async def test_a_guest_that_stops_reading_cannot_hang_the_host(tmp_path: Path):
    async def deaf(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(60)  # accepts, never reads
    client, server = await guest(tmp_path, deaf)
    t0 = time.monotonic()
    with pytest.raises(AgentUnavailable):  # 16 MiB cannot fit in the socket buffers
        await client.request({"op": "put", "path": "/x"}, b"x" * (16 << 20), timeout=2)
    assert time.monotonic() - t0 < 3
    # the channel was cut (its framing is unknown): later calls fail at once, nothing waits
    t0 = time.monotonic()
    with pytest.raises(AgentUnavailable):
        await client.exec(ExecRequest(["sync"], timeout_s=10))
    await asyncio.wait_for(client.close(), 1)
    assert time.monotonic() - t0 < 1
    server.close()


async def test_an_oversized_answer_is_refused_not_buffered(tmp_path: Path):
    async def big(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        async for h, _ in requests(r):
            w.write(P.encode({"id": h["id"], "type": "data"}, b"x" * (2 << 20)))
            await w.drain()
    client, server = await guest(tmp_path, big)
    with pytest.raises(GuestError) as e:
        await client.get_file("/etc/hosts", max_bytes=1 << 20)
    assert e.value.code == "EFBIG"
    await client.close()
    server.close()


async def test_file_ops_round_trip_and_a_lying_entry_is_refused(tmp_path: Path):
    """The client's fs requests answered by the guest's own code on a real
    directory; then a guest whose entry has the wrong types."""
    from guest import files
    from services.host_agent.application.ports import FileOp

    async def real(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        async for h, _ in requests(r):
            if h.get("op") == "hello":
                continue
            try:
                w.write(P.encode(files.fs(h["id"], h)))
            except OSError as e:
                w.write(P.encode({"id": h["id"], "type": "error", "code": P.errno_code(e),
                                  "message": str(e)}))
            await w.drain()
    client, server = await guest(tmp_path, real)
    d = tmp_path / "box"
    st = await client.file_op(FileOp("mkdir", f"{d}/a", parents=True))
    assert st is not None and st.kind == "dir" and st.is_dir and st.name == "a"
    (d / "a" / "f").write_bytes(b"abc")
    st = await client.file_op(FileOp("rename", f"{d}/a/f", to=f"{d}/a/g"))
    assert st is not None and (st.name, st.size, st.kind) == ("g", 3, "file")
    with pytest.raises(GuestError) as e:
        await client.file_op(FileOp("remove", f"{d}/a"))
    assert e.value.code == "ENOTEMPTY"
    assert await client.file_op(FileOp("remove", f"{d}/a", recursive=True)) is None
    with pytest.raises(GuestError) as e:
        await client.file_op(FileOp("stat", f"{d}/a"))
    assert e.value.code == "ENOENT"
    await client.close()
    server.close()

    async def liar(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        async for h, _ in requests(r):
            w.write(P.encode({"id": h["id"], "type": "ok",
                              "entry": {"name": "x", "size": "big", "is_dir": 0, "mode": []}}))
            await w.drain()
    (tmp_path / "l").mkdir()
    client, server = await guest(tmp_path / "l", liar)
    with pytest.raises(GuestError) as e:
        await client.file_op(FileOp("stat", "/etc"))
    assert e.value.code == "EPROTO"
    await client.close()
    server.close()


async def test_lying_process_watch_and_range_answers_are_refused(tmp_path: Path):
    """A guest that answers background-process calls with the wrong shapes:
    output before `started`, an unknown stream, a listing of non-objects,
    events that are not events, a range larger than asked for."""
    from services.host_agent.application.ports import ProcCall, ProcEvent
    lies = {
        "spawn": [{"type": "out", "stream": "stdout"}],  # output before started
        "attach": [{"type": "started", "pid": 7}, {"type": "out", "stream": "secrets"}],
        "ps": [{"type": "ok", "procs": [1, 2]}],
        "poll": [{"type": "ok"}],  # payload below: not a list of events
        "get": [{"type": "data", "total": -1}],
    }

    async def liar(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        async for h, _ in requests(r):
            for answer in lies.get(h.get("op"), []):
                payload = (b'[{"name": 5, "op": "boom"}]' if h["op"] == "poll"
                           else b"x" * 10 if h["op"] == "get" else b"leak")
                w.write(P.encode({"id": h["id"], **answer}, payload))
            await w.drain()
    client, server = await guest(tmp_path, liar)
    seen: list[ProcEvent] = []

    async def sink(e: ProcEvent) -> None:
        seen.append(e)
    for call in (ProcCall("spawn", cmd=["x"]), ProcCall("attach", pid=7), ProcCall("ps"),
                 ProcCall("poll", pid=7)):
        with pytest.raises(GuestError) as e:
            await asyncio.wait_for(client.proc(
                call, sink if call.action in ("spawn", "attach") else None), 10)
        assert e.value.code == "EPROTO", call
    assert [x.kind for x in seen] == ["start"]  # nothing of the lies reached the caller
    with pytest.raises(GuestError) as e:
        await client.get_range("/etc/hosts", 0, 4)
    assert e.value.code == "EPROTO"
    await client.close()
    server.close()
