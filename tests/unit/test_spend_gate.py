"""The gateway's spend gate: warn at 80%, refuse at 100%, go on (and say so)
when billing does not answer, and ask billing at most once per TTL."""
import asyncio
from datetime import UTC, datetime

import pytest

from contracts.billing import SpendStatus
from services.api_gateway.application.spend import SpendCapReached, SpendGate
from services.billing.domain.spend import crossed_levels, level, month_of

pytestmark = pytest.mark.unit


def status(used: float, cap: float | None) -> SpendStatus:
    lvl, pct = level(used, cap)
    return SpendStatus(org_id="o", month="2026-12", used_vcpu_seconds=used,
                       cap_vcpu_seconds=cap, percent=pct, level=lvl)


def test_levels_and_the_crossings_they_imply():
    assert level(10, None) == ("none", None)
    assert level(79.99, 100) == ("ok", 79.99)
    assert level(80, 100) == ("warn", 80.0)
    assert level(100, 100) == ("over", 100.0)
    assert [crossed_levels(x) for x in ("none", "ok", "warn", "over")] == [(), (), (80,), (80, 100)]
    assert month_of(datetime(2026, 12, 31, 23, 59, tzinfo=UTC))[0] == "2026-12"


def test_warns_refuses_and_caches():
    answers = [status(85, 100), status(120, 100)]
    calls = []

    async def fetch(org: str) -> SpendStatus:
        calls.append(org)
        return answers[len(calls) - 1]
    gate = SpendGate(fetch, ttl_s=60)
    assert "85% of the monthly" in asyncio.run(gate.admit("o"))
    assert "85% of the monthly" in asyncio.run(gate.admit("o"))  # cached
    assert calls == ["o"]
    gate.forget("o")
    with pytest.raises(SpendCapReached) as e:
        asyncio.run(gate.admit("o"))
    assert e.value.status == 402 and "120 of 100" in e.value.detail


def test_billing_away_lets_creates_through_and_is_not_asked_each_time():
    calls = []

    async def fetch(org: str) -> SpendStatus:
        calls.append(org)
        raise TimeoutError
    gate = SpendGate(fetch, ttl_s=60)
    assert asyncio.run(gate.admit("o")) is None
    assert asyncio.run(gate.admit("o")) is None
    assert calls == ["o"]
