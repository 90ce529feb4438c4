"""The per-host bridge (sync pyroute2 calls; run them via asyncio.to_thread)."""
from __future__ import annotations

import errno
import ipaddress
import logging

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger("corral.host_agent.network")


class NetworkConflict(RuntimeError):
    """The subnet overlaps an address on another interface."""


def set_sysctl(path: str, value: str) -> bool:
    """Write a /proc/sys value; False if the knob does not exist. Where /proc/sys
    is read-only (a container) the value must already be set: else an error."""
    try:
        with open(path, "w") as f:
            f.write(value)
        return True
    except FileNotFoundError:
        return False
    except OSError as e:
        if read_sysctl(path) == value:
            return True
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise OSError(e.errno, f"{path} is {read_sysctl(path)!r}, must be {value!r}, and is "
                      "read-only here (in a container set it with sysctls, e.g. "
                      "net.ipv6.conf.default.disable_ipv6=1 before the interface exists)") from e


def read_sysctl(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def link_index(ipr: IPRoute, name: str) -> int | None:
    idx = ipr.link_lookup(ifname=name)
    return idx[0] if idx else None


def check_subnet_free(ipr: IPRoute, bridge: str, subnet: str) -> None:
    """Refuse a subnet that overlaps an address on any other interface."""
    net = ipaddress.IPv4Network(subnet)
    br = link_index(ipr, bridge)
    for a in ipr.get_addr(family=2):
        if a["index"] == br:
            continue
        other = ipaddress.IPv4Network(
            f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}", strict=False)
        if other.overlaps(net):
            raise NetworkConflict(
                f"{subnet} overlaps {other} on ifindex {a['index']}")


def ensure_bridge(name: str, gateway: str, prefix_len: int, mac: str) -> int:
    """Create (or fix up) the bridge: fixed MAC, gateway address, no IPv6, up."""
    with IPRoute() as ipr:
        idx = link_index(ipr, name)
        if idx is None:
            try:
                ipr.link("add", ifname=name, kind="bridge", address=mac)
                log.info("bridge %s created", name)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
            idx = link_index(ipr, name)
            if idx is None:
                raise NetworkConflict(f"bridge {name} vanished right after it was created")
        else:
            kind = ipr.link("get", index=idx)[0].get(("linkinfo", "kind"))
            if kind != "bridge":
                raise NetworkConflict(f"{name} exists and is a {kind}, not a bridge")
            ipr.link("set", index=idx, address=mac)
        # Guests must not reach the host over IPv6 link-local either.
        set_sysctl(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "1")
        have = {(a.get("IFA_ADDRESS"), a["prefixlen"])
                for a in ipr.get_addr(index=idx, family=2)}
        if (gateway, prefix_len) not in have:
            try:
                ipr.addr("add", index=idx, address=gateway, prefixlen=prefix_len)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
        ipr.link("set", index=idx, state="up")
        return idx


def delete_link(name: str) -> bool:
    """Delete a link by name; False if it did not exist."""
    with IPRoute() as ipr:
        idx = link_index(ipr, name)
        if idx is None:
            return False
        try:
            ipr.link("del", index=idx)
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise
            return False
        return True


def enable_forwarding(ifnames: list[str] | None) -> list[str]:
    """Turn on IPv4 forwarding, globally (None) or per interface.

    Returns the knobs actually changed (already-on ones are skipped).
    """
    paths = (["/proc/sys/net/ipv4/ip_forward"] if ifnames is None else
             [f"/proc/sys/net/ipv4/conf/{n}/forwarding" for n in ifnames])
    changed = []
    for p in paths:
        if read_sysctl(p) != "1":
            if not set_sysctl(p, "1"):
                raise FileNotFoundError(p)
            changed.append(p)
    return changed
