"""The Sandbox aggregate's fold over facts (pure domain)."""
import uuid

import pytest

from contracts.sandbox import (Failure, SandboxDestroyed, SandboxDestroyRequested, SandboxFailed,
                               SandboxLost, SandboxRecovered, SandboxRequested, SandboxScheduled,
                               SandboxSpec,
                               SandboxStarted, SandboxStarting)
from services.api_gateway.domain.sandbox import Sandbox

pytestmark = pytest.mark.unit


def new() -> Sandbox:
    r = SandboxRequested(op_id="op", org_id="o", sandbox_id=str(uuid.uuid4()),
                         spec=SandboxSpec(), request_hash="h")
    return Sandbox(r.model_dump(mode="json"))


def f(sb, cls, **kw):
    return cls(op_id="op", org_id="o", sandbox_id=str(sb.id), **kw).model_dump(mode="json")


def test_happy_path_and_duplicates():
    sb = new()
    sched = f(sb, SandboxScheduled, host_id="h")
    assert sb.record_fact(sched) and not sb.record_fact(sched)
    sb.record_fact(f(sb, SandboxStarting, host_id="h"))
    sb.record_fact(f(sb, SandboxStarted, host_id="h", vcpus=1, memory_mib=256, accel="tcg"))
    assert sb.state == "running" and sb.accel == "tcg"
    sb.record_fact(f(sb, SandboxDestroyRequested))
    assert sb.state == "stopping" and not sb.can_destroy()
    sb.record_fact(f(sb, SandboxDestroyed, host_id="h"))
    assert sb.state == "destroyed" and sb.ended_at


def test_prerequisites_keep_causal_order():
    sb = new()
    starting = f(sb, SandboxStarting, host_id="h")
    assert sb.missing_prerequisite(starting) == "SandboxScheduled"
    sb.record_fact(f(sb, SandboxScheduled, host_id="h"))
    assert sb.missing_prerequisite(starting) is None
    destroyed = f(sb, SandboxDestroyed, host_id="h")
    assert sb.missing_prerequisite(destroyed) == "SandboxDestroyRequested"
    sb.record_fact(starting)
    sb.record_fact(f(sb, SandboxDestroyRequested))
    assert sb.missing_prerequisite(destroyed) == "SandboxStarted|SandboxFailed"
    sb.record_fact(f(sb, SandboxFailed, host_id="h", failure=Failure(code="x", message="y")))
    assert sb.missing_prerequisite(destroyed) is None
    # facts from the scheduler (no host) need no host-side cause
    other = new()
    assert other.missing_prerequisite(
        f(other, SandboxFailed, failure=Failure(code="no_capacity", message="m"))) is None


def test_terminal_states_absorb_late_facts():
    sb = new()
    sb.record_fact(f(sb, SandboxScheduled, host_id="h"))
    sb.record_fact(f(sb, SandboxLost, host_id="h", reason="gone"))
    assert sb.state == "lost" and sb.failure["code"] == "host_lost"
    sb.record_fact(f(sb, SandboxStarting, host_id="h"))
    assert sb.state == "lost"
    sb.record_fact(f(sb, SandboxDestroyRequested))
    sb.record_fact(f(sb, SandboxDestroyed))
    assert sb.state == "destroyed"


def test_pause_resume_stop_start_cycle():
    from contracts.sandbox import (SandboxPaused, SandboxPauseRequested, SandboxResumed,
                                   SandboxResumeRequested, SandboxStartRequested, SandboxStopped,
                                   SandboxStopRequested)
    sb = new()
    for cls, kw in ((SandboxScheduled, {"host_id": "h"}), (SandboxStarting, {"host_id": "h"}),
                    (SandboxStarted, {"host_id": "h", "vcpus": 1, "memory_mib": 256,
                                      "accel": "tcg"})):
        sb.record_fact(f(sb, cls, **kw))
    paused = f(sb, SandboxPaused, host_id="h")
    assert sb.missing_prerequisite(paused) == "SandboxPauseRequested"
    sb.record_fact(f(sb, SandboxPauseRequested))
    assert sb.state == "running" and sb.pause_requested
    sb.record_fact(paused)
    assert sb.state == "paused" and not sb.pause_requested
    sb.record_fact(f(sb, SandboxResumeRequested))
    sb.record_fact(f(sb, SandboxResumed, host_id="h"))
    assert sb.state == "running"
    sb.record_fact(f(sb, SandboxStopRequested))
    sb.record_fact(f(sb, SandboxStopped, host_id="h"))
    assert sb.state == "stopped" and sb.ended_at
    sb.record_fact(f(sb, SandboxStartRequested))
    assert sb.state == "starting" and sb.ended_at is None and sb.can_stop()
    sb.record_fact(f(sb, SandboxStarted, host_id="h", vcpus=1, memory_mib=256, accel="tcg"))
    assert sb.state == "running"


def test_recovered_after_lost_is_live_again_and_destroyable_by_its_host():
    sb = new()
    sb.record_fact(f(sb, SandboxScheduled, host_id="h"))
    sb.record_fact(f(sb, SandboxStarting, host_id="h"))
    sb.record_fact(f(sb, SandboxStarted, host_id="h", vcpus=1, memory_mib=256, accel="tcg"))
    sb.record_fact(f(sb, SandboxLost, host_id="h", reason="host h missed heartbeats"))
    assert sb.state == "lost" and sb.failure["code"] == "host_lost" and sb.ended_at
    rec = f(sb, SandboxRecovered, host_id="h", state="paused", lost_at=sb.ended_at, vcpus=1,
            memory_mib=256)
    assert sb.record_fact(rec)
    assert sb.state == "paused" and sb.failure is None and sb.ended_at is None and sb.live
    # lost again, then destroyed on its returning host by policy: no destroy request needed
    sb.record_fact(f(sb, SandboxLost, host_id="h", reason="again"))
    gone = f(sb, SandboxDestroyed, host_id="h")
    assert sb.missing_prerequisite(gone) is None
    sb.record_fact(gone)
    assert sb.state == "destroyed"
    # a recovery that arrives after the end changes nothing
    sb.record_fact(f(sb, SandboxRecovered, host_id="h", state="running", lost_at=sb.ended_at,
                     vcpus=1, memory_mib=256))
    assert sb.state == "destroyed"


def test_a_boot_finished_while_lost_is_running_when_recovered_as_starting():
    """The host's inventory saw it starting; its SandboxStarted was folded in
    before the recovery: running, not stuck starting."""
    sb = new()
    sb.record_fact(f(sb, SandboxScheduled, host_id="h"))
    sb.record_fact(f(sb, SandboxLost, host_id="h", reason="host h missed heartbeats"))
    sb.record_fact(f(sb, SandboxStarting, host_id="h"))
    sb.record_fact(f(sb, SandboxStarted, host_id="h", vcpus=1, memory_mib=256, accel="tcg"))
    assert sb.state == "lost"
    sb.record_fact(f(sb, SandboxRecovered, host_id="h", state="starting", lost_at=sb.ended_at,
                     vcpus=1, memory_mib=256))
    assert sb.state == "running"
