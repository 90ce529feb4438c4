"""kill -9 every service mid-flight, restart: nothing lost, nothing doubled.

Control-plane scenario on the FAKE VMM driver (idle processes that survive an
agent crash like qemu does): 16 concurrent TCG boots on 2 cores would only
measure the emulator. Real-VM crash recovery is in test_vm_platform.py.
"""
import collections
import concurrent.futures
import signal

import pytest

from corral.devstack import SERVICES

from .conftest import running_stack
from .stack import Api, read_stream

pytestmark = pytest.mark.e2e


@pytest.fixture
def crash_stack(tmp_path):
    with running_stack(tmp_path / "stack", driver="fake") as st:
        yield st


def test_kill_all_services_mid_flight_then_restart(crash_stack):
    st = crash_stack
    api = Api(st.api_url, st.creds.api_key)
    settled = [api.post("/v1/sandboxes?wait=true", json={}).json()["id"] for _ in range(4)]
    for sid in settled[:2]:
        assert api.delete(f"/v1/sandboxes/{sid}").status_code == 202
    for sid in settled[:2]:
        api.wait_state(sid, ("destroyed",))
    before = {sid: api.get(f"/v1/sandboxes/{sid}").json() for sid in settled}

    # a burst of creates and deletes, with every service killed while it is in flight
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        creates = [pool.submit(api.post, "/v1/sandboxes", json={}) for _ in range(12)]
        accepted = [f.result() for f in creates]
    in_flight = [r.json()["id"] for r in accepted if r.status_code == 202]
    assert len(in_flight) == 12
    assert api.delete(f"/v1/sandboxes/{settled[2]}").status_code == 202
    for name in SERVICES:
        st.kill(name, signal.SIGKILL)

    for name in SERVICES:
        st.start_service(name)
    st.wait_ready()
    api = Api(st.api_url, st.creds.api_key)
    # state rebuilt from the store, identical for what had settled
    for sid in (settled[0], settled[1], settled[3]):
        assert api.get(f"/v1/sandboxes/{sid}").json() == before[sid]
    # no request lost: everything accepted converges
    for sid in in_flight + [settled[3]]:
        assert api.wait_state(sid, ("running",), 90)["state"] == "running"
    api.wait_state(settled[2], ("destroyed",), 90)

    msgs = read_stream(st, "corral.evt.sandbox.>", "corral.evt.hostfact.>")
    ids = [m[1]["event_id"] for m in msgs]
    assert len(ids) == len(set(ids)), "an event was published twice"
    per = collections.defaultdict(list)
    for _, body, _ in msgs:
        per[body["sandbox_id"]].append(body["type"])
    for sid in in_flight:
        c = collections.Counter(per[sid])
        assert c["SandboxRequested"] == c["SandboxScheduled"] == c["SandboxStarted"] == 1, per[sid]
    cmds = read_stream(st, "corral.cmd.host.>")
    starts = collections.Counter(b["sandbox_id"] for _, b, _ in cmds if b["type"] == "StartSandbox")
    assert all(starts[sid] == 1 for sid in in_flight)
    # the history endpoint agrees with the bus
    for sid in in_flight[:3]:
        hist = api.get(f"/v1/sandboxes/{sid}/events").json()["items"]
        assert [e["event_id"] for e in hist] == [b["event_id"] for _, b, _ in msgs
                                                  if b["sandbox_id"] == sid]
