"""Per-org concurrency and rate bounds on exec, files, snapshot and fork."""
import asyncio

import pytest

from services.api_gateway.application.errors import TooMany
from services.api_gateway.application.guest_io import GuestIO
from services.api_gateway.application.op_limits import (DEFAULT_OP_LIMITS, OpLimit, OpLimits,
                                                        parse_op_limits)

pytestmark = pytest.mark.unit


def test_parse_overrides_the_defaults_and_rejects_nonsense():
    got = parse_op_limits("exec=2/30, fork=1/1")
    assert got["exec"] == OpLimit(2, 30) and got["fork"] == OpLimit(1, 1)
    assert got["files"] == DEFAULT_OP_LIMITS["files"]
    for bad in ("exec=0/10", "exec=1", "run=1/1", "exec=a/b", "exec=1/0"):
        with pytest.raises(ValueError):
            parse_op_limits(bad)


def test_concurrency_is_per_org_and_freed_on_release():
    ops = OpLimits({"exec": OpLimit(2, 1000)})
    a, b = ops.acquire("o", "exec"), ops.acquire("o", "exec")
    with pytest.raises(TooMany, match="at most 2") as e:
        ops.acquire("o", "exec")
    assert e.value.retry_after_s == 1
    ops.acquire("other", "exec").release()  # another org is not affected
    a.release()
    a.release()  # twice is once
    assert ops.in_use("o", "exec") == 1
    with ops.acquire("o", "exec"):
        assert ops.in_use("o", "exec") == 2
    b.release()
    assert ops.in_use("o", "exec") == 0


def test_rate_is_a_token_bucket_and_a_refusal_for_concurrency_spends_none():
    now = [0.0]
    ops = OpLimits({"snapshot": OpLimit(1, 2)}, clock=lambda: now[0])
    held = ops.acquire("o", "snapshot")
    with pytest.raises(TooMany, match="at most 1"):
        ops.acquire("o", "snapshot")  # refused for concurrency: no token spent
    held.release()
    ops.acquire("o", "snapshot").release()  # the second token
    with pytest.raises(TooMany, match="rate limit") as e:
        ops.acquire("o", "snapshot")
    assert e.value.retry_after_s == 30
    now[0] = 30.0
    ops.acquire("o", "snapshot").release()


class _Ledger:
    def find(self, sandbox_id, org_id):
        class Sb:
            state, host_id = "running", "h1"
        return Sb()


class _Hosts:
    def __init__(self):
        self.gate = asyncio.Event()

    async def exec(self, host, req):
        await self.gate.wait()
        return "done"

    async def exec_stream(self, host, req):
        async def chunks():
            for i in range(3):
                yield i
        return chunks()

    async def list_files(self, host, req):
        raise ConnectionError("host gone")


async def test_guest_io_holds_a_slot_per_call_and_a_stream_until_it_ends():
    ops = OpLimits({"exec": OpLimit(1, 1000), "files": OpLimit(1, 1000)})
    hosts = _Hosts()
    io = GuestIO(_Ledger(), hosts, ops)  # type: ignore[arg-type]
    cmd = {"cmd": ["true"]}
    running = asyncio.create_task(io.exec("o", "s", "op", cmd))
    await asyncio.sleep(0)
    with pytest.raises(TooMany):
        await io.exec("o", "s", "op", cmd)  # the org's only exec slot is taken
    with pytest.raises(TooMany):
        await io.exec_stream("o", "s", "op", cmd)
    hosts.gate.set()
    assert await running == "done"
    stream = await io.exec_stream("o", "s", "op", cmd)
    assert ops.in_use("o", "exec") == 1  # held while the stream lives
    assert [c async for c in stream] == [0, 1, 2]
    assert ops.in_use("o", "exec") == 0
    stream = await io.exec_stream("o", "s", "op", cmd)
    await stream.__anext__()
    await stream.aclose()  # a client that went away frees it too
    assert ops.in_use("o", "exec") == 0
    with pytest.raises(ConnectionError):
        await io.list_files("o", "s", "op", {"path": "/"})
    assert ops.in_use("o", "files") == 0  # a failed call frees its slot
