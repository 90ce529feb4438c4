"""Host networking against the real kernel: bridge, TAPs, nftables. Guests
are network namespaces behind veth pairs (see netns.py); egress has its own
module (test_egress.py)."""
from __future__ import annotations

import asyncio
import random
import secrets

import pytest

from services.host_agent.adapters.network import HostNetwork, check_network
from services.host_agent.adapters.network import bridge as brmod
from services.host_agent.adapters.network import tap as tapmod
from services.host_agent.adapters.network.ipam import guest_mac, tap_name, veth_peer_name

from .netns import Env, Server, connect, host_listener, link_exists, ns_argv, rand_octet, ruleset, sh
from .vm_support import require

pytestmark = [pytest.mark.integration, pytest.mark.net]

require(("nft", "ip"), root=True)


@pytest.fixture
async def tapnet():
    r = secrets.token_hex(3)
    net = HostNetwork(f"crlt{r}", f"198.18.{rand_octet()}.0/24", uplinks=[])
    try:
        await net.setup()
        yield net
    finally:
        await net.teardown()
        assert f"corral_crlt{r}" not in ruleset()


# --------------------------------------------------------------------------
# traffic tests (veth guests)
# --------------------------------------------------------------------------
async def test_guest_cannot_reach_host_services(env: Env):
    lease, ns = await env.guest("sbx-a", egress=True)
    port = random.randint(20000, 40000)
    gw_srv = await host_listener(env.net.gateway, port)
    lo_srv = await host_listener("127.0.0.1", port)
    # Make the kernel's martian check irrelevant: only our rules may protect
    # 127.0.0.1 (the bridge is the test's own device).
    brmod.set_sysctl(f"/proc/sys/net/ipv4/conf/{env.bridge}/route_localnet", "1")
    await sh(*ns_argv(ns, "sysctl", "-qw", f"net.ipv4.conf.{veth_peer_name(lease.tap)}.route_localnet=1"))
    await sh(*ns_argv(ns, "ip", "addr", "flush", "dev", "lo"))
    await sh(*ns_argv(ns, "ip", "route", "add", "127.0.0.1/32", "via", lease.gateway))
    try:
        assert (await connect(ns, env.net.gateway, port)).startswith("fail")
        assert (await connect(ns, "127.0.0.1", port)).startswith("fail")
        assert (await env.net.rules.counters())["guest_to_host"] > 0
        # Control: without our input chain both connections would succeed.
        await sh("nft", "flush", "chain", "inet", env.net.rules.table, "guest_in")
        assert await connect(ns, env.net.gateway, port) == "ok host"
        assert await connect(ns, "127.0.0.1", port) == "ok host"
        await env.net.setup()  # idempotent re-apply restores the rules
        assert (await connect(ns, env.net.gateway, port)).startswith("fail")
        assert (await connect(ns, "127.0.0.1", port)).startswith("fail")
    finally:
        gw_srv.close()
        lo_srv.close()


async def test_guest_cannot_reach_another_guest(env: Env):
    a, ns_a = await env.guest("sbx-a", egress=True)
    b, ns_b = await env.guest("sbx-b", egress=True)
    port = random.randint(20000, 40000)
    async with Server(ns_b, b.ip, port):
        # Control: B is up and reachable from the host.
        assert await connect(None, b.ip, port) == f"ok {env.net.gateway}"
        # L2: isolated ports + bridge rules.
        assert (await connect(ns_a, b.ip, port)).startswith("fail")
        # L3: A routes B's address via the gateway (hairpin through the host).
        await sh(*ns_argv(ns_a, "ip", "route", "add", f"{b.ip}/32", "via", a.gateway))
        assert (await connect(ns_a, b.ip, port)).startswith("fail")
        assert (await env.net.rules.counters())["guest_to_guest"] > 0


async def test_egress_off_blocks_and_on_allows_with_nat(env: Env):
    fwd_before = brmod.read_sysctl("/proc/sys/net/ipv4/ip_forward")
    a, ns_a = await env.guest("sbx-a", egress=False)
    port = random.randint(20000, 40000)
    async with Server(env.outside_ns, env.outside_ip, port):
        # (Forwarding is still off here: nothing needed it yet.)
        assert (await connect(ns_a, env.outside_ip, port)).startswith("fail")
        await env.net.set_egress("sbx-a", True)
        # The outside sees the host's address: masqueraded.
        assert await connect(ns_a, env.outside_ip, port) == f"ok {env.host_out_ip}"
        # A spoofed source (another address in the subnet) is dropped at L2.
        spoof = str(a.gateway).rsplit(".", 1)[0] + ".250"
        await sh(*ns_argv(ns_a, "ip", "addr", "add", f"{spoof}/32",
                          "dev", veth_peer_name(a.tap)))
        assert (await connect(ns_a, env.outside_ip, port, src=spoof)).startswith("fail")
        assert (await env.net.rules.counters())["spoofed"] > 0
        await env.net.set_egress("sbx-a", False)
        assert (await connect(ns_a, env.outside_ip, port)).startswith("fail")
        assert (await env.net.rules.counters())["egress_denied"] > 0  # our drop, not routing
    # Forwarding was enabled on our own devices only, never globally.
    assert brmod.read_sysctl("/proc/sys/net/ipv4/ip_forward") == fwd_before
    assert brmod.read_sysctl(f"/proc/sys/net/ipv4/conf/{env.bridge}/forwarding") == "1"


# --------------------------------------------------------------------------
# TAP lifecycle, release, reconcile, concurrency
# --------------------------------------------------------------------------
class Recorder:
    def __init__(self, fail_on: str | None = None) -> None:
        self.events: list[tuple[str, str, str | None]] = []
        self.fail_on = fail_on

    async def __call__(self, sandbox_id: str, kind: str, value: str | None) -> None:
        self.events.append((sandbox_id, kind, value))
        if kind == self.fail_on and value is not None:
            raise RuntimeError("durable store down")


def tap_info(name: str, bridge: str) -> dict:
    with brmod.IPRoute() as ipr:
        idx = brmod.link_index(ipr, name)
        link = ipr.link("get", index=idx)[0]
        port = ipr.brport("show", index=idx)[0]
        return {"kind": link.get(("linkinfo", "kind")), "master": link.get("IFLA_MASTER"),
                "isolated": port.get(("protinfo", "IFLA_BRPORT_ISOLATED")),
                "bridge_idx": brmod.link_index(ipr, bridge)}


async def test_release_removes_tap_and_every_rule(tapnet: HostNetwork):
    rec = Recorder()
    l1 = await tapnet.allocate("sbx-1", egress=True, record=rec)
    l2 = await tapnet.allocate("sbx-2", egress=False, record=rec)
    assert rec.events[:2] == [("sbx-1", "tap", l1.tap), ("sbx-1", "nft", f"{l1.tap}|{l1.mac}|{l1.ip}")]
    info = await asyncio.to_thread(tap_info, l1.tap, tapnet.bridge)
    assert info["kind"] == "tun" and info["isolated"] == 1
    assert info["master"] == info["bridge_idx"]
    details = await sh("ip", "-d", "link", "show", l1.tap)
    assert "tun type tap pi off vnet_hdr on persist on user root" in details
    assert "isolated on" in details and "learning off" in details and "flood off" in details
    rs = ruleset()
    assert l1.tap in rs and l1.ip in rs and l1.mac in rs

    await tapnet.release("sbx-1", record=rec)
    assert ("sbx-1", "tap", None) in rec.events and ("sbx-1", "nft", None) in rec.events
    assert not await link_exists(l1.tap)
    rs = ruleset()
    for token in (l1.tap, l1.ip, l1.mac):
        assert token not in rs
    assert l2.tap in rs and await link_exists(l2.tap)  # the other sandbox is untouched
    await tapnet.release("sbx-1")                # idempotent
    await tapnet.release("never-allocated")

    # Release without in-memory state (agent restarted): looks keys up in nft.
    fresh = HostNetwork(tapnet.bridge, tapnet.subnet, uplinks=[])
    await fresh.release("sbx-2")
    rs = ruleset()
    assert not await link_exists(l2.tap) and l2.tap not in rs and l2.ip not in rs
    assert await tapnet.list_owned() == []


async def test_failed_allocate_removes_what_it_created(tapnet: HostNetwork):
    rec = Recorder(fail_on="nft")
    with pytest.raises(RuntimeError):
        await tapnet.allocate("sbx-f", egress=True, record=rec)
    tap = tap_name("sbx-f")
    assert not await link_exists(tap) and tap not in ruleset()
    key = f"{tap}|{guest_mac('sbx-f')}|{tapnet._ipam.gateway + 1!s}"
    assert [e[1:] for e in rec.events] == [("tap", tap), ("nft", key), ("nft", None), ("tap", None)]
    assert await tapnet.list_owned() == []
    assert tapnet._ipam.held() == {}  # the address was given back


async def test_reconcile_removes_unknown_leftovers(tapnet: HostNetwork):
    keep = await tapnet.allocate("sbx-keep", egress=True)
    gone = await tapnet.allocate("sbx-gone", egress=True)
    # A leftover from a crash: TAP attached to our bridge, never recorded.
    stray = "tap" + secrets.token_hex(6)
    await asyncio.to_thread(tapmod.create_tap, stray)
    await asyncio.to_thread(tapmod.attach, stray, tapnet.bridge,
                            tapmod.alias_for(tapnet.bridge, "stray"), "02:00:00:00:00:99")
    # A stray egress element, and a foreign tap-named device that is not ours.
    stray_ip = str(tapnet._ipam.gateway + 200)
    await tapnet.rules.set_egress(stray_ip, True)
    foreign = "tap" + secrets.token_hex(6)
    await asyncio.to_thread(tapmod.create_tap, foreign)
    try:
        restarted = HostNetwork(tapnet.bridge, tapnet.subnet, uplinks=[])
        await restarted.setup()  # idempotent: keeps existing elements
        report = await restarted.reconcile({"sbx-keep": keep})
        assert set(report["removed"]) == {
            f"link:{gone.tap}", f"link:{stray}", f"port:{gone.tap}",
            f"guest:{gone.tap}|{gone.mac}|{gone.ip}", f"egress:{gone.ip}", f"egress:{stray_ip}"}
        assert report["missing"] == [] and report["repaired"] == []
        owned = {(o.kind, o.key) for o in await restarted.list_owned()}
        assert owned == {("link", keep.tap), ("port", keep.tap),
                         ("guest", f"{keep.tap}|{keep.mac}|{keep.ip}"), ("egress", keep.ip)}
        assert await link_exists(foreign) and not await link_exists(stray) and not await link_exists(gone.tap)
        # Drift repair: a known lease whose rule vanished gets it back.
        await restarted.rules.set_egress(keep.ip, False)
        report = await restarted.reconcile({"sbx-keep": keep})
        assert report["repaired"] == ["sbx-keep"] and report["removed"] == []
        # The restarted instance never hands out a known address.
        assert (await restarted.allocate("sbx-new")).ip != keep.ip
        await restarted.release("sbx-new")
    finally:
        await asyncio.to_thread(brmod.delete_link, foreign)


async def test_concurrent_allocations_get_distinct_ips(tapnet: HostNetwork):
    in_use = {str(tapnet._ipam.gateway + i) for i in (1, 2, 5)}
    leases = await asyncio.gather(*(tapnet.allocate(f"sbx-{i}", in_use=in_use) for i in range(24)))
    ips = [ls.ip for ls in leases]
    assert len(set(ips)) == 24 and not set(ips) & in_use
    assert len({ls.tap for ls in leases}) == 24 and len({ls.mac for ls in leases}) == 24
    st = await tapnet.rules.state()
    assert {g.ip for g in st.guests} == set(ips)
    # Same sandbox twice at once: one lease.
    dup = await asyncio.gather(tapnet.allocate("sbx-0"), tapnet.allocate("sbx-0"))
    assert dup[0] == dup[1] == leases[0]
    await asyncio.gather(*(tapnet.release(f"sbx-{i}") for i in range(24)))
    assert await tapnet.list_owned() == []


def test_checks_report_usable():
    res = check_network()
    assert res.ok, res.items
