"""Two scheduler processes at once never place one sandbox twice (FAKE VMM driver:
this is about placement under concurrency, not about VMs)."""
import asyncio
import collections
import concurrent.futures
import json
import time
import uuid

import nats
import pytest

from corral.devstack import DevStack

from .conftest import running_stack
from .stack import Api, read_stream

pytestmark = pytest.mark.e2e


def republish(st: DevStack, msgs: list, copies: int) -> None:
    """Inject duplicates under fresh Nats-Msg-Ids, as a buggy gateway would."""
    async def go():
        nc = await nats.connect(st.nats_url, **st.bus_login("gateway"))
        js = nc.jetstream()
        for subject, body, _ in msgs:
            for _ in range(copies):
                await js.publish(subject, json.dumps(body).encode(),
                                 headers={"Nats-Msg-Id": str(uuid.uuid4())})
        await nc.close()
    asyncio.run(go())


def wait_drained(st: DevStack, durable: str, timeout_s: float = 60) -> None:
    async def go():
        nc = await nats.connect(st.nats_url, **st.bus_login("ops"))
        js = nc.jetstream()
        deadline = time.monotonic() + timeout_s
        while True:
            info = await js.consumer_info("CORRAL_SANDBOX", durable)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                break
            assert time.monotonic() < deadline, f"{durable} not drained"
            await asyncio.sleep(0.1)
        await nc.close()
    asyncio.run(go())


def test_two_schedulers_place_each_sandbox_once(tmp_path):
    with running_stack(tmp_path / "stack", driver="fake") as st:
        st.start_service("scheduler", instance="1", name="scheduler-2")
        api = Api(st.api_url, st.creds.api_key)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            rs = list(pool.map(lambda _: api.post("/v1/sandboxes", json={}), range(24)))
        assert [r.status_code for r in rs] == [202] * 24
        ids = [r.json()["id"] for r in rs]
        requested = read_stream(st, "corral.evt.sandbox.*.*.SandboxRequested")
        republish(st, [m for m in requested if m[1]["sandbox_id"] in ids], copies=2)
        for sid in ids:
            api.wait_state(sid, ("running",), 60)
        wait_drained(st, "scheduler-placement")
        msgs = read_stream(st, "corral.evt.sandbox.*.*.SandboxScheduled")
        placed = collections.Counter(b["sandbox_id"] for _, b, _ in msgs)
        assert {i: placed[i] for i in ids} == {i: 1 for i in ids}
        cmds = read_stream(st, "corral.cmd.host.>")
        starts = collections.Counter(b["sandbox_id"] for _, b, _ in cmds if b["type"] == "StartSandbox")
        assert {i: starts[i] for i in ids} == {i: 1 for i in ids}
        assert st.procs["scheduler-2"].poll() is None and st.procs["scheduler"].poll() is None
