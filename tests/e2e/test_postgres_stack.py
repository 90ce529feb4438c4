"""The whole stack with every service's store on PostgreSQL (FAKE VMM driver: this
is about the production store path, not about VMs)."""
import signal

import pytest

from .conftest import running_stack
from .stack import Api

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def test_lifecycle_and_restart_on_postgres(tmp_path, pg_url):
    with running_stack(tmp_path / "stack", "fake", store=pg_url) as st:
        api = Api(st.api_url, st.creds.api_key)
        keep = api.post("/v1/sandboxes?wait=true", json={"name": "pg-keep"}).json()
        gone = api.post("/v1/sandboxes?wait=true", json={}).json()
        assert keep["state"] == gone["state"] == "running"
        api.delete(f"/v1/sandboxes/{gone['id']}")
        api.wait_state(gone["id"], ("destroyed",))
        before = api.get("/v1/sandboxes").json()
        # the listing reads its writes: what the sandbox's own view said, at once
        assert {i["id"]: i["state"] for i in before["items"]}[gone["id"]] == "destroyed"
        st.kill("api_gateway", signal.SIGKILL)
        st.start_service("api_gateway")
        st.wait_ready()
        after = api.get("/v1/sandboxes").json()
        pairs = zip(before["items"], after["items"], strict=False)
        diff = [(b["id"][:8], k, b.get(k), a.get(k)) for b, a in pairs
                for k in set(a) | set(b) if a.get(k) != b.get(k)]
        assert after == before, (diff, len(before["items"]), len(after["items"]))
        assert api.get(f"/v1/sandboxes/{keep['id']}").json() == keep
        assert [e["type"] for e in api.get(f"/v1/sandboxes/{gone['id']}/events").json()["items"]][-1] \
            == "SandboxDestroyed"
        assert api.post("/v1/sandboxes", json={"name": "pg-keep"}).status_code == 409
