"""Egress against the real kernel (namespaces for guests and the internet,
see netns.py): the internet yes, private, link-local and control-plane
addresses never, operator deny and allow lists, and no established flow
outliving egress off or a lease release."""
from __future__ import annotations

import asyncio
import random

import pytest

from services.host_agent.adapters.network.nft import BridgeRules

from .netns import PY, Env, Server, connect, ns_argv, sh
from .vm_support import require

pytestmark = [pytest.mark.integration, pytest.mark.net]

require(("nft", "ip"), root=True)


def private_targets() -> dict[str, str]:
    """One address in each range a guest must never reach (random within the
    range; the test routes them to the outside namespace)."""
    r = lambda: random.randint(1, 254)  # noqa: E731
    return {"rfc1918-10": f"10.{r()}.{r()}.5", "rfc1918-172": f"172.{random.randint(16, 31)}.{r()}.5",
            "rfc1918-192": f"192.168.{r()}.5", "cgnat": f"100.{random.randint(64, 127)}.{r()}.5",
            "link-local": f"169.254.{r()}.{r()}"}


async def route_to_outside(env: Env, addrs: list[str]) -> None:
    """Make `addrs` live in the outside namespace, routed there by the host."""
    for a in addrs:
        await sh(*ns_argv(env.outside_ns, "ip", "addr", "add", f"{a}/32", "dev", "lo"))
        await sh("ip", "route", "add", f"{a}/32", "via", env.outside_ip)


async def unroute(addrs: list[str]) -> None:
    for a in addrs:
        await sh("ip", "route", "del", f"{a}/32", check=False)


async def test_egress_reaches_the_internet_but_no_private_or_link_local_address(env: Env):
    """The metadata-service and RFC 1918 attack: with egress on, every private,
    CGNAT and link-local destination routed through the host is refused; a
    public-style one (the outside namespace) works. Controls prove each refused
    address is reachable but for our rule."""
    _, ns_a = await env.guest("sbx-a", egress=True)
    targets = private_targets()
    await route_to_outside(env, list(targets.values()))
    port = random.randint(20000, 40000)
    servers = [Server(env.outside_ns, "0.0.0.0", port)]
    try:
        async with servers[0]:
            assert await connect(ns_a, env.outside_ip, port) == f"ok {env.host_out_ip}"
            for what, addr in targets.items():
                assert (await connect(ns_a, addr, port)).startswith("fail"), what
            assert (await env.net.rules.counters())["egress_blocked"] >= len(targets)
            # control: without the deny set every one of them answers
            await sh("nft", "flush", "set", "inet", env.net.rules.table, "egress_deny")
            for what, addr in targets.items():
                assert await connect(ns_a, addr, port) == f"ok {env.host_out_ip}", what
            await env.net.setup()  # re-applied: refused again
            assert (await connect(ns_a, targets["link-local"], port)).startswith("fail")
    finally:
        await unroute(list(targets.values()))


async def test_operator_deny_and_allow_lists(env: Env):
    _, ns_a = await env.guest("sbx-a", egress=True)
    mirror = f"10.{random.randint(1, 254)}.{random.randint(1, 254)}.7"  # an internal mirror
    await route_to_outside(env, [mirror])
    port = random.randint(20000, 40000)
    try:
        async with Server(env.outside_ns, "0.0.0.0", port):
            # a control-plane address (here: the outside host) added to the deny list
            env.net.rules = BridgeRules(env.bridge, env.subnet, deny=[env.outside_ip])
            await env.net.rules.setup()
            assert (await connect(ns_a, env.outside_ip, port)).startswith("fail")
            # an allow-list: only the mirror, though it is in 10/8
            env.net.rules = BridgeRules(env.bridge, env.subnet, allow=[f"{mirror}/32"])
            await env.net.rules.setup()
            assert await connect(ns_a, mirror, port) == f"ok {env.host_out_ip}"
            assert (await connect(ns_a, env.outside_ip, port)).startswith("fail")
            # back to the default: the internet, not the mirror
            env.net.rules = BridgeRules(env.bridge, env.subnet)
            await env.net.rules.setup()
            assert await connect(ns_a, env.outside_ip, port) == f"ok {env.host_out_ip}"
            assert (await connect(ns_a, mirror, port)).startswith("fail")
    finally:
        await unroute([mirror])


UDP_BLASTER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
_, peer = s.recvfrom(64)
s.settimeout(0.05)
while True:  # a datagram every 50 ms to the latest peer that said hi
    try:
        _, peer = s.recvfrom(64)
    except TimeoutError:
        pass
    s.sendto(b"x", peer)
"""

UDP_LISTENER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b"hi", (sys.argv[1], int(sys.argv[2])))
while True:
    s.recv(64); print("rx", flush=True)
"""


async def tracked(ip: str) -> int:
    return await asyncio.to_thread(_tracked, ip)


def _tracked(ip: str) -> int:  # pyroute2's sync socket: not on the loop's thread
    from pyroute2 import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple
    with Conntrack() as ct:
        return sum(len(list(ct.dump_entries(tuple_orig=NFCTAttrTuple(**{k: ip}))))
                   for k in ("saddr", "daddr"))


async def received(proc, seconds: float) -> int:
    """Datagrams the guest got in the next `seconds`."""
    n, deadline = 0, asyncio.get_running_loop().time() + seconds
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        try:
            await asyncio.wait_for(proc.stdout.readline(), left)
            n += 1
        except TimeoutError:
            break
    return n


async def test_egress_off_and_release_cut_established_flows(env: Env):
    """A flow the guest opened while egress was on keeps flowing in (conntrack
    says established) unless its entries are forgotten; egress off forgets them."""
    a, ns_a = await env.guest("sbx-a", egress=True)
    port = random.randint(20000, 40000)
    blaster = await asyncio.create_subprocess_exec(
        *ns_argv(env.outside_ns, PY, "-c", UDP_BLASTER, env.outside_ip, str(port)),
        stdout=asyncio.subprocess.PIPE)
    listener = None
    try:
        assert (await asyncio.wait_for(blaster.stdout.readline(), 10)).strip() == b"ready"
        listener = await asyncio.create_subprocess_exec(
            *ns_argv(ns_a, PY, "-c", UDP_LISTENER, env.outside_ip, str(port)),
            stdout=asyncio.subprocess.PIPE)
        assert await received(listener, 1.0) >= 5 and await tracked(a.ip) >= 1
        # control: removing the rule alone leaves the established flow alive
        await env.net.rules.set_egress(a.ip, False)
        await received(listener, 0.3)
        assert await received(listener, 1.0) >= 5
        await env.net.set_egress("sbx-a", False)  # rule gone and flows forgotten
        await received(listener, 0.3)  # in flight
        assert await received(listener, 1.5) == 0 and await tracked(a.ip) == 0
        # release forgets too (the address may be leased to another sandbox)
        await env.net.set_egress("sbx-a", True)
        listener.kill()
        await listener.wait()
        listener = await asyncio.create_subprocess_exec(
            *ns_argv(ns_a, PY, "-c", UDP_LISTENER, env.outside_ip, str(port)),
            stdout=asyncio.subprocess.PIPE)
        assert await received(listener, 1.0) >= 1 and await tracked(a.ip) >= 1
        await env.net.release("sbx-a")
        assert await tracked(a.ip) == 0
    finally:
        for p in (blaster, listener):
            if p is not None and p.returncode is None:
                p.kill()
                await p.wait()
