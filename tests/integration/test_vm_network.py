"""Network isolation proven with real QEMU microVMs (not veth stand-ins).

One module-scoped environment: a HostNetwork on a test bridge (`crlv<hex>`,
a random /24 in 198.18.0.0/15), a QemuDriver using it, and an "outside"
network namespace behind a veth pair (a random 198.19.x.0/30) that the host
routes to and that stands in for the internet. Two VMs are booted (TCG is
slow, the host has 2 cores): A with egress off, B with egress on. Every probe
runs as a small python3 socket program inside the guests via `exec`.

Every address and device used here is created by the test itself, so no
packet leaves this machine. Forwarding is enabled per interface on the
test's own bridge and veth only (HostNetwork(uplinks=[...])), never globally.
Teardown removes VMs, TAPs, the bridge, the nft tables, the namespace and the
veth even when a test or the set-up fails, and then checks that it did.
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from services.host_agent.adapters.network import HostNetwork, NetLease
from services.host_agent.adapters.network import bridge as brmod
from services.host_agent.adapters.network.bridge import NetworkConflict
from services.host_agent.adapters import procs
from services.host_agent.adapters.qemu import QemuDriver
from services.host_agent.application.ports import ExecChunk, ExecRequest, VmSpec

from .vm_support import Recorder, kill_ours, require

pytestmark = [pytest.mark.integration, pytest.mark.vm, pytest.mark.net]

require(("nft", "ip", "qemu-system-x86_64"), root=True)

HOST_PY = sys.executable
# A dropped SYN shows up as a timeout; anything local answers in milliseconds
# even under TCG, so a few seconds cannot turn a real connection into "fail".
CONNECT_TIMEOUT = 3.0
EXEC_TIMEOUT = 60.0

# Guest-side client: connect to every (host, port) in argv[1] concurrently;
# prints a JSON list of "ok <what the server sent>" / "fail <exception name>".
GUEST_CLIENT = r"""
import json, socket, sys, threading
targets, t = json.loads(sys.argv[1]), float(sys.argv[2])
res = [None] * len(targets)
def go(i, host, port):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(t)
    try:
        if fam == socket.AF_INET6:
            s.connect(socket.getaddrinfo(host, port, fam, socket.SOCK_STREAM)[0][4])
        else:
            s.connect((host, port))
        res[i] = "ok " + s.recv(128).decode()
    except OSError as e:
        res[i] = "fail " + type(e).__name__
    finally:
        s.close()
ths = [threading.Thread(target=go, args=(i, h, p)) for i, (h, p) in enumerate(targets)]
for th in ths: th.start()
for th in ths: th.join()
print(json.dumps(res))
"""

# TCP server replying with the peer address it sees (used in the outside
# namespace on the host and inside VM B). Dual-stack when bound to "::".
SERVER = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
if ":" in host:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port)); s.listen(16)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    p = peer[0]
    c.sendall((p[7:] if p.startswith("::ffff:") else p).encode()); c.close()
"""


# --------------------------------------------------------------------------
# host-side helpers
# --------------------------------------------------------------------------
async def sh(*argv: str, check: bool = True, timeout: float = 30) -> str:
    p = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{argv}: {err.decode().strip()}")
    return out.decode()


def ns_argv(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def _link_exists(name: str) -> bool:
    with brmod.IPRoute() as ipr:
        return brmod.link_index(ipr, name) is not None


async def link_exists(name: str) -> bool:
    # pyroute2's sync IPRoute cannot run on a thread with a running loop.
    return await asyncio.to_thread(_link_exists, name)


def ruleset_text() -> str:
    return subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True, text=True,
                          check=True).stdout


def mentions(text: str, token: str) -> bool:
    """`token` occurs in `text` as a whole address/name (198.18.5.2 != 198.18.5.23)."""
    return re.search(rf"(?<![\w.:]){re.escape(token)}(?![\w.:])", text, re.I) is not None


def host_ipv4_networks() -> list[ipaddress.IPv4Network]:
    out = json.loads(subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True,
                                    text=True, check=True).stdout)
    return [ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False)
            for link in out for a in link.get("addr_info", [])]


def pick_free(template: str, used: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    for _ in range(200):
        net = ipaddress.IPv4Network(template.format(random.randint(1, 254)))
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError(f"no free subnet like {template}")


class HostListener:
    """asyncio TCP listener on the host answering with a fixed tag."""

    def __init__(self, host: str, tag: bytes) -> None:
        self.host, self.tag, self.port, self.server = host, tag, 0, None

    async def __aenter__(self) -> HostListener:
        async def handle(r, w):
            w.write(self.tag)
            await w.drain()
            w.close()
        for _ in range(20):
            self.port = random.randint(20000, 40000)
            try:
                self.server = await asyncio.start_server(handle, self.host, self.port)
                break
            except OSError:
                continue
        else:
            raise RuntimeError(f"could not bind a port on {self.host}")
        # Control: the listener answers locally.
        r, w = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 5)
        assert await r.read() == self.tag
        w.close()
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()


class NsServer:
    """SERVER in a network namespace on the host."""

    def __init__(self, ns: str, host: str) -> None:
        self.ns, self.host, self.port, self.proc = ns, host, random.randint(20000, 40000), None

    async def __aenter__(self) -> NsServer:
        self.proc = await asyncio.create_subprocess_exec(
            *ns_argv(self.ns, HOST_PY, "-c", SERVER, self.host, str(self.port)),
            stdout=asyncio.subprocess.PIPE)
        line = await asyncio.wait_for(self.proc.stdout.readline(), 10)
        assert line.strip() == b"ready", line
        return self

    async def __aexit__(self, *exc) -> None:
        self.proc.kill()
        await self.proc.wait()


async def host_connect(host: str, port: int) -> str:
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
    except (TimeoutError, OSError) as e:
        return f"fail {type(e).__name__}"
    try:
        return "ok " + (await asyncio.wait_for(r.read(128), CONNECT_TIMEOUT)).decode()
    finally:
        w.close()


# --------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------
@dataclass
class Vm:
    sid: str
    lease: NetLease
    pid: int


@dataclass
class Env:
    r: str = field(default_factory=lambda: secrets.token_hex(3))

    def __post_init__(self) -> None:
        self.bridge = f"crlv{self.r}"
        self.uplink = f"crlvu{self.r}"      # host end of the veth towards "outside"
        self.uplink_peer = f"crlvp{self.r}"
        self.outside_ns = f"crlvo{self.r}"
        self.state_root = Path(tempfile.mkdtemp(prefix="cv-", dir="/tmp"))
        self.rec = Recorder()
        self.vms: dict[str, Vm] = {}
        self.destroyed: set[str] = set()
        self.net: HostNetwork | None = None
        self.driver: QemuDriver | None = None
        self.a: Vm | None = None   # egress off
        self.b: Vm | None = None   # egress on

    # -- set-up ---------------------------------------------------------------
    async def start(self) -> None:
        used = await asyncio.to_thread(host_ipv4_networks)
        out_net = pick_free("198.19.{}.0/30", used)
        h = list(out_net.hosts())
        self.host_out_ip, self.outside_ip = str(h[0]), str(h[1])
        # The outside namespace and the veth pair (host end keeps host_out_ip).
        await sh("ip", "netns", "add", self.outside_ns)
        await sh("ip", "link", "add", self.uplink, "type", "veth", "peer", "name", self.uplink_peer)
        await sh("ip", "link", "set", self.uplink_peer, "netns", self.outside_ns)
        await sh("ip", "addr", "add", f"{self.host_out_ip}/30", "dev", self.uplink)
        await sh("ip", "link", "set", self.uplink, "up")
        for cmd in (["ip", "addr", "add", f"{self.outside_ip}/30", "dev", self.uplink_peer],
                    ["ip", "link", "set", self.uplink_peer, "up"],
                    ["ip", "link", "set", "lo", "up"]):
            await sh(*ns_argv(self.outside_ns, *cmd))
        # Deliberately no route back to the guest subnet in the outside
        # namespace: only masqueraded traffic can be answered.
        for _ in range(5):
            used = await asyncio.to_thread(host_ipv4_networks)
            subnet = pick_free("198.18.{}.0/24", used)
            net = HostNetwork(self.bridge, str(subnet), uplinks=[self.uplink])
            try:
                await net.setup()
            except NetworkConflict:  # another run took it in between
                continue
            self.net = net
            break
        else:
            raise RuntimeError("could not find a free 198.18.x.0/24")
        self.driver = QemuDriver(self.state_root, network=self.net)
        sid_a, sid_b = f"vna-{self.r}", f"vnb-{self.r}"
        infos = await asyncio.gather(
            self.driver.start(VmSpec(sid_a, "vmnet-a", egress=False), self.rec),
            self.driver.start(VmSpec(sid_b, "vmnet-b", egress=True), self.rec),
            return_exceptions=True)
        for sid, info in zip((sid_a, sid_b), infos, strict=True):
            if not isinstance(info, BaseException):
                self.vms[sid] = Vm(sid, self.net.lease(sid), info.pid)
        for info in infos:
            if isinstance(info, BaseException):
                raise info
        self.a, self.b = self.vms[sid_a], self.vms[sid_b]

    # -- guest helpers ----------------------------------------------------------
    async def gexec(self, vm: Vm, *cmd: str, timeout: float = EXEC_TIMEOUT,
                    check: bool = True) -> str:
        r = await self.driver.exec(vm.sid, ExecRequest(list(cmd), timeout_s=timeout))
        if check and (r.exit_code != 0 or r.timed_out):
            raise AssertionError(f"{vm.sid}: {cmd} -> {r.exit_code} timed_out={r.timed_out} "
                                 f"stderr={r.stderr.decode(errors='replace')}")
        return r.stdout.decode()

    async def connect(self, vm: Vm, targets: list[tuple[str, int]],
                      timeout: float = CONNECT_TIMEOUT) -> list[str]:
        out = await self.gexec(vm, "python3", "-c", GUEST_CLIENT,
                               json.dumps([[h, p] for h, p in targets]), str(timeout))
        return json.loads(out)

    async def counters(self) -> dict[str, int]:
        return await self.net.rules.counters()

    async def destroy(self, vm: Vm) -> None:
        self.destroyed.add(vm.sid)
        await self.driver.destroy(vm.sid, self.rec.by_sid.get(vm.sid, {}))

    # -- teardown -------------------------------------------------------------------
    async def stop(self) -> list[str]:
        """Remove everything; returns the errors met (never raises early)."""
        errors: list[str] = []

        async def step(what: str, coro) -> None:
            try:
                await coro
            except Exception as e:  # noqa: BLE001 - keep going: later steps must still run
                errors.append(f"{what}: {e!r}")

        if self.driver is not None:
            for sid in list(self.rec.by_sid):
                if sid not in self.destroyed:
                    await step(f"destroy {sid}", self.driver.destroy(sid, self.rec.by_sid[sid]))
            # Belt and braces: any QEMU still running under our state root.
            root = self.driver.state_root
            for sid, pid in procs.find_ours(root).items():
                await step(f"kill {sid}", kill_ours(pid, sid, root))
            await step("driver close", self.driver.close())
        if self.net is not None:
            await step("network teardown", self.net.teardown())
        else:  # set-up failed before the network existed: still remove our tables
            from services.host_agent.adapters.network.nft import BridgeRules
            await step("nft teardown", BridgeRules(self.bridge, "0.0.0.0/32").teardown())
            await step("bridge", asyncio.to_thread(brmod.delete_link, self.bridge))
        await step("netns", sh("ip", "netns", "del", self.outside_ns, check=False))
        await step("uplink", asyncio.to_thread(brmod.delete_link, self.uplink))
        shutil.rmtree(self.state_root, ignore_errors=True)
        return errors

    async def leftovers(self) -> list[str]:
        left = []
        for name in (self.bridge, self.uplink, *(v.lease.tap for v in self.vms.values())):
            if await link_exists(name):
                left.append(f"link {name}")
        if f'"corral_{self.bridge}' in await asyncio.to_thread(ruleset_text):
            left.append("nft tables")
        if self.outside_ns in (await sh("ip", "netns", "list")).split():
            left.append(f"netns {self.outside_ns}")
        for v in self.vms.values():
            if procs.is_ours(v.pid, v.sid, self.state_root.resolve()):
                left.append(f"qemu {v.pid}")
        if self.state_root.exists():
            left.append(str(self.state_root))
        return left


@pytest_asyncio.fixture(scope="module")
async def env():
    e = Env()
    try:
        await e.start()
        yield e
    finally:
        errors = await e.stop()
        left = await e.leftovers()
        assert not errors and not left, f"teardown errors={errors} leftovers={left}"


# --------------------------------------------------------------------------
# 1. addressing
# --------------------------------------------------------------------------
async def test_guest_has_leased_address_and_default_route(env: Env):
    for vm in (env.a, env.b):
        lease = vm.lease
        addrs = json.loads(await env.gexec(vm, "ip", "-j", "-4", "addr", "show", "dev", "eth0"))
        v4 = [(a["local"], a["prefixlen"]) for a in addrs[0]["addr_info"]]
        assert v4 == [(lease.ip, lease.prefix_len)], (vm.sid, v4)
        mac = (await env.gexec(vm, "cat", "/sys/class/net/eth0/address")).strip()
        assert mac == lease.mac
        routes = json.loads(await env.gexec(vm, "ip", "-j", "-4", "route", "show", "default"))
        assert [(r.get("gateway"), r.get("dev")) for r in routes] == [(lease.gateway, "eth0")]
        assert lease.gateway == env.net.gateway
        # Same from the kernel's own table, independent of iproute2's parsing.
        rt = await env.gexec(vm, "cat", "/proc/net/route")
        gw_hex = ipaddress.IPv4Address(lease.gateway).packed[::-1].hex().upper()
        assert any(f.split()[:3] == ["eth0", "00000000", gw_hex] for f in rt.splitlines()[1:])
    assert env.a.lease.ip != env.b.lease.ip
    assert not env.a.lease.egress and env.b.lease.egress


# --------------------------------------------------------------------------
# 2. egress
# --------------------------------------------------------------------------
async def test_egress_off_blocked_on_allowed_and_masqueraded(env: Env):
    async with NsServer(env.outside_ns, env.outside_ip) as srv:
        target = [(env.outside_ip, srv.port)]
        before = await env.counters()
        res_a, res_b = await asyncio.gather(env.connect(env.a, target), env.connect(env.b, target))
        assert res_a == ["fail TimeoutError"], res_a
        assert (await env.counters())["egress_denied"] > before["egress_denied"]
        # B is let out and the outside sees the host's address, not the guest's.
        assert res_b == [f"ok {env.host_out_ip}"], res_b
        assert env.b.lease.ip not in res_b[0]
        # Control: A's failure is the egress policy, not broken plumbing.
        await env.net.set_egress(env.a.sid, True)
        try:
            assert await env.connect(env.a, target) == [f"ok {env.host_out_ip}"]
        finally:
            await env.net.set_egress(env.a.sid, False)
        assert await env.connect(env.a, target) == ["fail TimeoutError"]


# --------------------------------------------------------------------------
# 3. guest -> host
# --------------------------------------------------------------------------
LO_RESTORE = "ip addr add 127.0.0.1/8 dev lo 2>/dev/null; ip route del 127.0.0.1/32 2>/dev/null; " \
             "echo 0 > /proc/sys/net/ipv4/conf/eth0/route_localnet; true"


async def test_guests_cannot_reach_any_host_address(env: Env):
    gw = env.net.gateway
    lo_route = f"/proc/sys/net/ipv4/conf/{env.bridge}/route_localnet"
    async with HostListener(gw, b"host-gw") as l_gw, \
            HostListener(env.host_out_ip, b"host-uplink") as l_up, \
            HostListener("127.0.0.1", b"host-lo") as l_lo:
        # For 127.0.0.1 via the gateway to mean anything, the kernels must not
        # drop it as martian first: route_localnet on the test's own bridge and
        # on the guests' eth0, and the guests' loopback address removed so
        # 127.0.0.1 is routed to the gateway. Only our nft rules then protect.
        brmod.set_sysctl(lo_route, "1")
        setup_lo = (f"ip addr flush dev lo && echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet"
                    f" && ip route add 127.0.0.1/32 via {gw} dev eth0")
        try:
            await asyncio.gather(*(env.gexec(vm, "sh", "-c", setup_lo) for vm in (env.a, env.b)))
            targets = [(gw, l_gw.port), (env.host_out_ip, l_up.port), ("127.0.0.1", l_lo.port)]
            before = await env.counters()
            res = await asyncio.gather(*(env.connect(vm, targets) for vm in (env.a, env.b)))
            for vm, r in zip((env.a, env.b), res, strict=True):
                assert r == ["fail TimeoutError"] * 3, (vm.sid, r)
            after = await env.counters()
            # At least one SYN per attempt reached the host and our rule dropped it.
            assert after["guest_to_host"] - before["guest_to_host"] >= 6, (before, after)
        finally:
            brmod.set_sysctl(lo_route, "0")
            await asyncio.gather(*(env.gexec(vm, "sh", "-c", LO_RESTORE, check=False)
                                   for vm in (env.a, env.b)))


# --------------------------------------------------------------------------
# 4. guest -> guest
# --------------------------------------------------------------------------
class GuestServer:
    """SERVER running inside a VM as a streaming exec; cancelled on exit."""

    def __init__(self, env: Env, vm: Vm, host: str) -> None:
        self.env, self.vm, self.host = env, vm, host
        self.port = random.randint(20000, 40000)
        self.ready = asyncio.Event()
        self.out = bytearray()
        self.task: asyncio.Task | None = None

    async def _chunk(self, c: ExecChunk) -> None:
        self.out += c.data
        if c.stream == "stdout" and b"ready" in self.out:
            self.ready.set()

    async def __aenter__(self) -> GuestServer:
        req = ExecRequest(["python3", "-c", SERVER, self.host, str(self.port)], timeout_s=600)
        self.task = asyncio.ensure_future(self.env.driver.exec(self.vm.sid, req, self._chunk))
        waiter = asyncio.ensure_future(self.ready.wait())
        done, _ = await asyncio.wait({self.task, waiter}, timeout=60,
                                     return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            res = self.task.result() if self.task.done() else None
            self.task.cancel()
            raise AssertionError(f"guest server not ready: {res!r} {bytes(self.out)!r}")
        return self

    async def __aexit__(self, *exc) -> None:
        self.task.cancel()  # the agent client sends `cancel`: the guest kills it
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


async def test_guest_cannot_reach_another_guest(env: Env):
    a, b = env.a, env.b
    # Structure: both TAPs are isolated bridge ports without learning/flooding.
    for vm in (a, b):
        details = await sh("ip", "-d", "link", "show", vm.lease.tap)
        assert f"master {env.bridge}" in details
        for flag in ("isolated on", "learning off", "flood off"):
            assert flag in details, (vm.lease.tap, flag, details)
    link6 = json.loads(await env.gexec(b, "ip", "-j", "-6", "addr", "show", "dev", "eth0",
                                       "scope", "link"))
    b_ll = next((x["local"] for ln in link6 for x in ln.get("addr_info", [])), None)
    async with GuestServer(env, b, "::" if b_ll else b.lease.ip) as srv:
        own = [(b.lease.ip, srv.port)] + ([(f"{b_ll}%eth0", srv.port)] if b_ll else [])
        # Controls: B reaches its own listener; the host reaches it over the TAP.
        assert await env.connect(b, own) == [f"ok {b.lease.ip}"] + (
            [f"ok {b_ll}"] if b_ll else [])
        assert await host_connect(b.lease.ip, srv.port) == f"ok {env.net.gateway}"

        # L2: isolated bridge ports (ARP for B never answered) and, over IPv6
        # link-local, the bridge table's ip6 drop. (Where br_netfilter is on,
        # bridged IPv4 also meets the inet guest_fwd drop: only removing all
        # three layers lets A in, which was checked by hand.)
        v6 = [(f"{b_ll}%eth0", srv.port)] if b_ll else []
        res = await env.connect(a, [(b.lease.ip, srv.port)] + v6)
        assert all(r.startswith("fail") for r in res), res

        # L2 with B's MAC forced into A's neighbour table: unicast frames to B.
        await env.gexec(a, "ip", "neigh", "replace", b.lease.ip, "lladdr", b.lease.mac,
                        "dev", "eth0", "nud", "permanent")
        try:
            assert await env.connect(a, [(b.lease.ip, srv.port)]) == ["fail TimeoutError"]
        finally:
            await env.gexec(a, "ip", "neigh", "del", b.lease.ip, "dev", "eth0", check=False)

        # L3: B routed via the gateway (hairpin through the host's router).
        before = await env.counters()
        await env.gexec(a, "ip", "route", "add", f"{b.lease.ip}/32", "via", env.net.gateway,
                        "dev", "eth0")
        try:
            assert await env.connect(a, [(b.lease.ip, srv.port)]) == ["fail TimeoutError"]
        finally:
            await env.gexec(a, "ip", "route", "del", f"{b.lease.ip}/32", check=False)
        assert (await env.counters())["guest_to_guest"] > before["guest_to_guest"]

        # B's listener is still fine afterwards (the failures were not a dead server).
        assert await env.connect(b, [(b.lease.ip, srv.port)]) == [f"ok {b.lease.ip}"]


# --------------------------------------------------------------------------
# 5. destroy (last: it consumes VM A)
# --------------------------------------------------------------------------
async def test_destroy_removes_tap_and_every_rule(env: Env):
    a, b = env.a, env.b
    rs = await asyncio.to_thread(ruleset_text)
    for token in (a.lease.tap, a.lease.ip, a.lease.mac):
        assert mentions(rs, token), token  # control: present before
    await env.destroy(a)
    assert await procs.wait_exit(a.pid, 10), "QEMU A still running"
    assert not await link_exists(a.lease.tap)
    rs = await asyncio.to_thread(ruleset_text)
    for token in (a.lease.tap, a.lease.ip, a.lease.mac):
        assert not mentions(rs, token), f"{token} still in nft ruleset"
    assert env.net.lease(a.sid) is None
    # B is untouched: its port, its rules and its egress still work.
    assert await link_exists(b.lease.tap)
    for token in (b.lease.tap, b.lease.ip, b.lease.mac):
        assert mentions(rs, token), token
    owned = {(o.kind, o.key) for o in await env.net.list_owned()}
    assert owned == {("link", b.lease.tap), ("port", b.lease.tap),
                     ("guest", f"{b.lease.tap}|{b.lease.mac}|{b.lease.ip}"),
                     ("egress", b.lease.ip)}
    async with NsServer(env.outside_ns, env.outside_ip) as srv:
        assert await env.connect(b, [(env.outside_ip, srv.port)]) == [f"ok {env.host_out_ip}"]
