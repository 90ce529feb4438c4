"""The spend guard in billing: an org's month-to-date vCPU-seconds against its
monthly cap, and each crossing of 80% and 100% published once, through the
store's outbox, whatever the number of checks."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from contracts.usage import SpendThresholdCrossed

from .inprocess import until
from .test_billing_service import ORG, billing, place, report, run_facts, stream_messages, wait_usage

pytestmark = pytest.mark.integration
__all__ = ["billing"]  # the fixture


async def crossings(bus) -> list[SpendThresholdCrossed]:
    return [SpendThresholdCrossed.model_validate_json(m.data)
            for m in await stream_messages(bus, "CORRAL_USAGE")
            if m.subject.endswith(".SpendThresholdCrossed")]


async def test_crossings_of_the_cap_are_published_once_each(billing):
    spend = billing.app.spend
    t0 = datetime.now(UTC) - timedelta(seconds=300)
    assert spend.status(ORG).level == "none"
    st = spend.set_cap(ORG, 100.0)
    assert (st.level, st.used_vcpu_seconds, st.cap_vcpu_seconds) == ("ok", 0, 100.0)

    await place(billing, "sb-1")
    await report(billing, *run_facts("sb-1", t0, 42, vcpus=2))  # 84 vCPU-s: 84%
    await wait_usage(billing, 1)

    async def warned() -> bool:
        return [c.percent for c in await crossings(billing)] == [80]
    await until(warned, 15, what="the 80% crossing")
    st = spend.status(ORG)
    assert (st.level, st.percent, st.used_vcpu_seconds) == ("warn", 84.0, 84.0)
    [c] = await crossings(billing)
    assert (c.org_id, c.month, c.cap_vcpu_seconds, c.used_vcpu_seconds) == (
        ORG, st.month, 100.0, 84.0)

    await place(billing, "sb-2")
    await report(billing, *run_facts("sb-2", t0, 10, vcpus=2))  # 104 vCPU-s

    async def over() -> bool:
        return [c.percent for c in await crossings(billing)] == [80, 100]
    await until(over, 15, what="the 100% crossing")
    assert spend.status(ORG).level == "over"
    for _ in range(3):  # checks again: nothing new
        assert spend.note([ORG]) == 0
    assert spend.set_cap(ORG, 1000.0).level == "ok"  # raised: creates pass again
    assert spend.set_cap(ORG, 50.0).level == "over"  # lowered: no repeat this month
    assert len(await crossings(billing)) == 2
    assert spend.set_cap(ORG, None).level == "none"
