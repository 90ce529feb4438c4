"""The whole stack with every service's store on PostgreSQL (FAKE VMM driver: this
is about the production store path, not about VMs)."""
import signal

import pytest

from corral.devstack import DevStack

from .conftest import e2e_env
from .stack import Api

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def test_lifecycle_and_restart_on_postgres(tmp_path, pg_url):
    st = DevStack(tmp_path / "stack", driver="fake", store=pg_url, extra_env=e2e_env("fake"))
    try:
        st.start()
        api = Api(st.api_url, st.creds.api_key)
        keep = api.post("/v1/sandboxes?wait=true", json={"name": "pg-keep"}).json()
        gone = api.post("/v1/sandboxes?wait=true", json={}).json()
        assert keep["state"] == gone["state"] == "running"
        api.delete(f"/v1/sandboxes/{gone['id']}")
        api.wait_state(gone["id"], ("destroyed",))
        before = api.get("/v1/sandboxes").json()
        st.kill("api_gateway", signal.SIGKILL)
        st.start_service("api_gateway")
        st.wait_ready()
        assert api.get("/v1/sandboxes").json() == before
        assert api.get(f"/v1/sandboxes/{keep['id']}").json() == keep
        assert [e["type"] for e in api.get(f"/v1/sandboxes/{gone['id']}/events").json()["items"]][-1] \
            == "SandboxDestroyed"
        assert api.post("/v1/sandboxes", json={"name": "pg-keep"}).status_code == 409
    finally:
        st.stop()
