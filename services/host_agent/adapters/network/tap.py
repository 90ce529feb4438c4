"""Guest ports: persistent TAPs (production) or veth pairs (tests).

Sync code; call through asyncio.to_thread. QEMU gets an fd on a TAP made
here (`open_tap`, `-netdev tap,id=n0,fd=N`) and gives the guest the lease MAC
(`-device virtio-net-device,netdev=n0,mac=<mac>`).
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .bridge import link_index, set_sysctl
from .ipam import is_tap_name, veth_peer_name

log = logging.getLogger("corral.host_agent.network")

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
TUNSETGROUP = 0x400454CE
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

ALIAS_PREFIX = "corral:"


def alias_for(bridge: str, sandbox_id: str) -> str:
    """ifalias marking a port as ours (bridge + sandbox id)."""
    return f"{ALIAS_PREFIX}{bridge}:{sandbox_id}"


def create_tap(name: str, uid: int | None = None, gid: int | None = None) -> None:
    """Create a persistent TAP (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR) via ioctl."""
    ifr = struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, ifr)
        if uid is not None:
            fcntl.ioctl(fd, TUNSETOWNER, uid)
        if gid is not None:
            fcntl.ioctl(fd, TUNSETGROUP, gid)
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)


def open_tap(name: str) -> int:
    """An fd on TAP `name` for QEMU (`-netdev tap,fd=N`): attaches to a
    persistent TAP, or makes a transient one that lives as long as the fd."""
    ifr = struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, ifr)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_veth(name: str, guest_mac: str) -> str:
    """Veth pair standing in for a TAP; returns the guest end's name."""
    peer = veth_peer_name(name)
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="veth",
                 peer={"ifname": peer, "address": guest_mac})
    return peer


NUD_NOARP = 0x40   # "static" fdb entry
NTF_MASTER = 0x04  # entry lives in the bridge's fdb


def attach(name: str, bridge: str, alias: str, guest_mac: str) -> None:
    """Mark as ours, enslave to the bridge, isolate, then bring up.

    Port flags: isolated (no port-to-port forwarding), no MAC learning and no
    unknown-unicast flooding, plus a static fdb entry for the guest MAC, so
    traffic for one guest is never flooded to another. The port stays down
    until configured, so it never forwards unfiltered.
    """
    with IPRoute() as ipr:
        idx, bridge_idx = link_index(ipr, name), link_index(ipr, bridge)
        if idx is None or bridge_idx is None:
            raise NetlinkError(errno.ENODEV, f"{name} or {bridge} is missing")
        ipr.link("set", index=idx, ifalias=alias, master=bridge_idx)
        set_sysctl(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "1")  # no host-side IPv6
        ipr.brport("set", index=idx, isolated=1, learning=0, unicast_flood=0)
        try:
            ipr.fdb("add", ifindex=idx, lladdr=guest_mac, state=NUD_NOARP,
                    flags=NTF_MASTER)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
        ipr.link("set", index=idx, state="up")


@dataclass(frozen=True)
class Port:
    name: str
    index: int
    kind: str | None
    attached: bool          # enslaved to our bridge
    sandbox_id: str | None  # from the ifalias, when set by us


def list_ports(bridge: str) -> list[Port]:
    """Our ports: TAP-style name AND (member of our bridge OR our ifalias).

    A name match alone is not enough: other software uses `tap*` names too.
    """
    out: list[Port] = []
    mine = alias_for(bridge, "")
    with IPRoute() as ipr:
        br = link_index(ipr, bridge)
        for link in ipr.get_links():
            name = link.get("IFLA_IFNAME")
            if not name or not is_tap_name(name):
                continue
            alias = link.get("IFLA_IFALIAS") or ""
            attached = br is not None and link.get("IFLA_MASTER") == br
            if not attached and not alias.startswith(mine):
                continue
            sid = alias[len(mine):] if alias.startswith(mine) else None
            out.append(Port(name, link["index"], link.get(("linkinfo", "kind")),
                            attached, sid or None))
    return out
