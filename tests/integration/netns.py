"""Network namespaces standing in for guests and for "the internet", for the
host networking tests (no VMs).

Each "guest" is a network namespace holding the guest end of a veth pair
whose host end is attached to the bridge exactly like a TAP
(HostNetwork(port_kind="veth")). The "internet" is another namespace behind
its own veth, routed by the host. Every address used is created by the tests
themselves (198.18.0.0/15, the benchmarking range, with a random third
octet), so no packet leaves this machine; forwarding is enabled per
interface on the tests' own devices only, never globally.
"""
from __future__ import annotations

import asyncio
import random
import secrets
import sys

from services.host_agent.adapters.network import HostNetwork, NetLease
from services.host_agent.adapters.network import bridge as brmod
from services.host_agent.adapters.network.ipam import veth_peer_name

PY = sys.executable
CONNECT_TIMEOUT = 1.0

SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8)
print("ready", flush=True)
while True:
    c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()
"""

CLIENT = r"""
import socket, sys
s = socket.socket(); s.settimeout(float(sys.argv[3]))
if len(sys.argv) > 4: s.bind((sys.argv[4], 0))
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("ok", s.recv(64).decode())
except OSError as e:
    print("fail", type(e).__name__)
"""


async def sh(*argv: str, check: bool = True) -> str:
    p = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 30)
    if check and p.returncode != 0:
        raise RuntimeError(f"{argv}: {err.decode().strip()}")
    return out.decode()


def ns_argv(ns: str | None, *argv: str) -> list[str]:
    return (["ip", "netns", "exec", ns] if ns else []) + list(argv)


async def connect(ns: str | None, host: str, port: int, src: str | None = None) -> str:
    """Try a TCP connect from namespace `ns`; 'ok <peer seen by server>' or 'fail ...'."""
    args = [host, str(port), str(CONNECT_TIMEOUT)] + ([src] if src else [])
    return (await sh(*ns_argv(ns, PY, "-c", CLIENT, *args))).strip()


class Server:
    """A TCP server in a namespace replying with the peer address it sees."""

    def __init__(self, ns: str | None, host: str, port: int) -> None:
        self.ns, self.host, self.port, self.proc = ns, host, port, None

    async def __aenter__(self):
        self.proc = await asyncio.create_subprocess_exec(
            *ns_argv(self.ns, PY, "-c", SERVER, self.host, str(self.port)),
            stdout=asyncio.subprocess.PIPE)
        line = await asyncio.wait_for(self.proc.stdout.readline(), 10)
        assert line.strip() == b"ready"
        return self

    async def __aexit__(self, *exc):
        self.proc.kill()
        await self.proc.wait()


async def host_listener(host: str, port: int) -> asyncio.base_events.Server:
    async def handle(r, w):
        w.write(b"host")
        await w.drain()
        w.close()
    return await asyncio.start_server(handle, host, port)


def rand_octet() -> int:
    return random.randint(1, 254)


def ruleset() -> str:
    import subprocess
    return subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True,
                          text=True, check=True).stdout


def _link_exists(name: str) -> bool:
    with brmod.IPRoute() as ipr:
        return brmod.link_index(ipr, name) is not None


async def link_exists(name: str) -> bool:
    # pyroute2's sync IPRoute cannot run on a thread with a running loop.
    return await asyncio.to_thread(_link_exists, name)


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------
class Env:
    """Bridge + guests (netns behind veth) + an 'outside' netns."""

    def __init__(self) -> None:
        r = secrets.token_hex(3)
        self.octet = rand_octet()
        self.bridge = f"crlt{r}"
        self.subnet = f"198.18.{self.octet}.0/24"
        self.uplink = f"crlu{r}"           # host end towards "outside"
        self.outside_ns = f"crlo{r}"
        self.host_out_ip = f"198.19.{self.octet}.1"
        self.outside_ip = f"198.19.{self.octet}.2"
        self.guest_ns: list[str] = []
        self.net = HostNetwork(self.bridge, self.subnet, uplinks=[self.uplink],
                               port_kind="veth")

    async def start(self) -> None:
        o, u = self.outside_ns, self.uplink
        await sh("ip", "netns", "add", o)
        await sh("ip", "link", "add", u, "type", "veth", "peer", "name", u + "p")
        await sh("ip", "link", "set", u + "p", "netns", o)
        await sh("ip", "addr", "add", f"{self.host_out_ip}/30", "dev", u)
        await sh("ip", "link", "set", u, "up")
        for cmd in (["ip", "addr", "add", f"{self.outside_ip}/30", "dev", u + "p"],
                    ["ip", "link", "set", u + "p", "up"], ["ip", "link", "set", "lo", "up"]):
            await sh(*ns_argv(o, *cmd))
        await self.net.setup()

    async def guest(self, sid: str, egress: bool) -> tuple[NetLease, str]:
        lease = await self.net.allocate(sid, egress=egress)
        ns = f"crlg{self.bridge[4:]}{len(self.guest_ns)}"
        self.guest_ns.append(ns)
        peer = veth_peer_name(lease.tap)
        await sh("ip", "netns", "add", ns)
        await sh("ip", "link", "set", peer, "netns", ns)
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "addr", "add", f"{lease.ip}/{lease.prefix_len}", "dev", peer],
                    ["ip", "link", "set", peer, "up"],
                    ["ip", "route", "add", "default", "via", lease.gateway]):
            await sh(*ns_argv(ns, *cmd))
        return lease, ns

    async def stop(self) -> None:
        for ns in self.guest_ns + [self.outside_ns]:
            await sh("ip", "netns", "del", ns, check=False)
        await sh("ip", "link", "del", self.uplink, check=False)
        await self.net.teardown()
