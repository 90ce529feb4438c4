"""kill -9 of billing in the middle of a Stripe push, then a restart: every
usage line's meter events arrive, none is billed twice, and only the calls in
flight at the kill are ever sent again (Stripe drops those by identifier)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from common.bus import Bus
from common.rpc import request
from contracts import billing as bc
from contracts import subjects
from corral.fake_stripe import FakeStripe

from .inprocess import until
from .test_billing_service import place, report, run_facts

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
N = 12  # sandboxes: 24 meter events


def start_billing(nats_url: str, state: Path, fake: FakeStripe, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update({"PYTHONPATH": str(REPO), "CORRAL_NATS_URL": nats_url,
                "CORRAL_STATE_DIR": str(state), "CORRAL_STORE": "sqlite",
                "CORRAL_HEALTH_PORT": "0", "CORRAL_STRIPE_API_KEY": "sk_test_corral",
                "CORRAL_STRIPE_API_BASE": fake.url, "CORRAL_STRIPE_PUSH_EVERY_S": "0.2",
                "CORRAL_STRIPE_BACKOFF_MAX_S": "2", "CORRAL_STRIPE_TIMEOUT_S": "3"})
    return subprocess.Popen([sys.executable, "-m", "services.billing"], env=env, cwd=REPO,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def test_kill_9_mid_push_then_restart_bills_each_line_exactly_once(private_nats, tmp_path):
    fake = FakeStripe().serve()
    # calls are in flight when the kill lands; far inside the client's 3 s timeout
    # (a call that times out is sent again, rightly: that would be a resend too)
    fake.faults["delay_s"] = 0.2
    log = tmp_path / "billing.log"
    proc = start_billing(private_nats.url, tmp_path / "state", fake, log)
    bus = Bus(private_nats.url, "crash-test")
    await bus.connect()
    try:
        async def consumer_ready() -> bool:
            try:
                await bus.js.consumer_info("CORRAL_SANDBOX", "billing-metering")
                return True
            except Exception:  # noqa: BLE001 - not created yet
                return False
        await until(consumer_ready, 30, what="billing up")
        t0 = datetime.now(UTC) - timedelta(seconds=600)
        for i in range(N):
            await place(bus, f"sb-{i}")
            await report(bus, *run_facts(f"sb-{i}", t0, 20 + i, vcpus=1, mem=512))

        async def some_sent() -> bool:
            return len(fake.events) >= 4
        await until(some_sent, 60, what="the push under way")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        at_kill = len(fake.events)
        assert 0 < at_kill < 2 * N, "the kill did not land mid-push"

        proc = start_billing(private_nats.url, tmp_path / "state", fake, log)

        async def all_in() -> bool:
            return len(fake.events) == 2 * N
        t = time.monotonic()
        await until(all_in, 60, what="every meter event after the restart")
        catch_up_s = time.monotonic() - t

        async def ledger_settled() -> bool:
            page = await request(bus.client, subjects.RPC_BILLING_PARKED, bc.ParkedQuery(),
                                 bc.ParkedPage, 10, 1 << 20)
            return {(t.state, t.lines) for t in page.totals} == {("sent", N)}
        await until(ledger_settled, 30, what="every ledger row sent")
    finally:
        proc.kill()
        proc.wait(10)
        await bus.close()
        fake.stop()
    posts = Counter(i for p, i, _ in fake.attempts if p == "/v1/billing/meter_events")
    resent = {i for i, n in posts.items() if n > 1}
    assert len(posts) == 2 * N
    assert all(fake.accepted_posts(i) == 1 for i in posts)  # billed once each
    assert len(resent) <= 8, resent  # at most the calls in flight at the kill (8 slots)
    assert {s for p, i, s in fake.attempts if i in resent} <= {200, 400}
    print(f"killed after {at_kill} of {2 * N} sent; {len(resent)} resent; "
          f"caught up in {catch_up_s:.1f}s")
