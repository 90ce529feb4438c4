"""The host agent's usage view stays equal to what the store says."""
import pytest

from common.eventstore import store_env
from services.host_agent.application.records import VmRecords

pytestmark = pytest.mark.unit


def starting(sid: str) -> dict:
    return {"type": "SandboxStarting", "sandbox_id": sid}


def test_usage_view_tracks_saves_and_matches_a_fresh_read(tmp_path):
    recs = VmRecords(store_env("sqlite", tmp_path, "host_agent"))
    recs.accept("a", "o", {"vcpus": 2, "memory_mib": 512}, starting("a"))
    assert recs.usage() == (1, 2, 512)  # built from the log
    recs.accept("b", "o", {"vcpus": 1, "memory_mib": 256}, starting("b"))
    recs.transition("a", "running", None)
    assert recs.usage() == (2, 3, 768)  # followed the saves
    recs.transition("a", "destroyed", None)
    assert recs.usage() == (1, 1, 256)
    fresh = VmRecords(store_env("sqlite", tmp_path, "host_agent"))
    assert fresh.usage() == recs.usage()
    recs.close()
    fresh.close()
