"""Two scheduler processes at once never place one sandbox twice (FAKE VMM driver:
this is about placement under concurrency, not about VMs)."""
import collections
import concurrent.futures

import pytest


from .conftest import make_stack
from .stack import Api, read_stream

pytestmark = pytest.mark.e2e


def test_two_schedulers_place_each_sandbox_once(tmp_path):
    st = make_stack(tmp_path / "stack", driver="fake")
    try:
        st.start()
        st.start_service("scheduler", instance="1", name="scheduler-2")
        api = Api(st.api_url, st.creds.api_key)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            rs = list(pool.map(lambda _: api.post("/v1/sandboxes?wait=true", json={}), range(24)))
        assert [r.status_code for r in rs] == [201] * 24, [r.text for r in rs if r.status_code != 201]
        ids = [r.json()["id"] for r in rs]
        msgs = read_stream(st.nats_url, "corral.evt.sandbox.*.*.SandboxScheduled")
        placed = collections.Counter(b["sandbox_id"] for _, b, _ in msgs)
        assert all(placed[i] == 1 for i in ids), placed
        cmds = read_stream(st.nats_url, "corral.cmd.host.>")
        starts = collections.Counter(b["sandbox_id"] for _, b, _ in cmds if b["type"] == "StartSandbox")
        assert all(starts[i] == 1 for i in ids)
        logs = [(st.state_dir / "logs" / f"{n}.log").read_text() for n in ("scheduler", "scheduler-2")]
        assert all("placed on" in text for text in logs), "both schedulers should take work"
    finally:
        st.stop()
