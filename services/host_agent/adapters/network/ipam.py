"""Pure naming and address logic: TAP names, MACs, IP allocation.

No I/O here, so it is unit-testable. Names and MACs are derived from a hash of
the sandbox id (not a prefix of it: ids minted in the same millisecond share
prefixes), so they are stable across agent restarts.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
import threading
from collections.abc import Iterable

TAP_PREFIX = "tap"
_HASH_CHARS = 12  # "tap" + 12 hex = 15 chars = IFNAMSIZ - 1
TAP_RE = re.compile(rf"^{TAP_PREFIX}[0-9a-f]{{{_HASH_CHARS}}}$")
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


class IpamError(Exception):
    """No address left, or a requested address is invalid or taken."""


def _check_id(sandbox_id: str) -> None:
    if not isinstance(sandbox_id, str) or not 0 < len(sandbox_id) <= 255:
        raise ValueError("sandbox_id must be a non-empty string of at most 255 chars")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in sandbox_id):
        raise ValueError("sandbox_id must not contain whitespace or control chars")


def _digest(kind: str, sandbox_id: str) -> bytes:
    _check_id(sandbox_id)
    return hashlib.sha256(f"corral:{kind}:{sandbox_id}".encode()).digest()


def tap_name(sandbox_id: str) -> str:
    """`tap` + 12 hex chars of a hash of the id (15 chars, fits IFNAMSIZ)."""
    return TAP_PREFIX + _digest("tap", sandbox_id).hex()[:_HASH_CHARS]


def is_tap_name(name: str) -> bool:
    return bool(TAP_RE.match(name))


def veth_peer_name(tap: str) -> str:
    """Guest end of the veth pair used instead of a TAP in tests."""
    return "gst" + tap[len(TAP_PREFIX):]


def guest_mac(sandbox_id: str) -> str:
    """Locally administered (bit 1), unicast (bit 0 clear) MAC, 46 hashed bits."""
    d = bytearray(_digest("mac", sandbox_id)[:6])
    d[0] = (d[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in d)


def bridge_mac(bridge: str) -> str:
    """Fixed bridge MAC: otherwise the bridge takes the lowest port MAC and
    changes it as TAPs come and go, which breaks guests' ARP caches."""
    d = bytearray(hashlib.sha256(f"corral:bridge:{bridge}".encode()).digest()[:6])
    d[0] = (d[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in d)


class Ipam:
    """In-memory allocator over one subnet; the gateway is the first host.

    The caller's durable records are the source of truth across restarts: it
    passes the addresses already in use (`in_use`) or re-creates a lease with
    an explicit `ip`. Thread-safe; `reserve` is the only commit step.
    """

    def __init__(self, subnet: str) -> None:
        net = ipaddress.IPv4Network(subnet, strict=True)
        if net.prefixlen > 29:
            raise ValueError(f"subnet {subnet} too small (need /29 or larger)")
        self.network = net
        self.gateway = net.network_address + 1
        self._first = int(net.network_address) + 2
        self._last = int(net.broadcast_address) - 1
        self._cursor = self._first
        self._by_ip: dict[str, str] = {}  # ip -> sandbox_id
        self._by_id: dict[str, str] = {}  # sandbox_id -> ip
        self._lock = threading.Lock()

    @property
    def prefix_len(self) -> int:
        return self.network.prefixlen

    def capacity(self) -> int:
        return self._last - self._first + 1

    def held(self) -> dict[str, str]:
        with self._lock:
            return dict(self._by_id)

    def _check_usable(self, ip: str) -> ipaddress.IPv4Address:
        try:
            addr = ipaddress.IPv4Address(ip)
        except ValueError as e:
            raise IpamError(f"invalid address {ip!r}") from e
        if not self._first <= int(addr) <= self._last:
            raise IpamError(f"{ip} is not a usable guest address in {self.network}")
        return addr

    def reserve(self, sandbox_id: str, ip: str | None = None,
                in_use: Iterable[str] = ()) -> str:
        """Reserve an address for `sandbox_id` (idempotent per id).

        `ip` re-creates a known lease: it only conflicts with addresses held
        here by another sandbox (`in_use` is the caller's view and may well
        contain this very lease). Without `ip`, the next address after the last
        one handed out that is neither held nor in `in_use` is chosen (round
        robin, so a just-freed address is not reused at once).
        """
        _check_id(sandbox_id)
        with self._lock:
            current = self._by_id.get(sandbox_id)
            if ip is not None:
                addr = str(self._check_usable(ip))
                if current is not None and current != addr:
                    raise IpamError(f"{sandbox_id} already holds {current}")
                owner = self._by_ip.get(addr)
                if owner is not None and owner != sandbox_id:
                    raise IpamError(f"{addr} is held by another sandbox")
                self._take(sandbox_id, addr)
                return addr
            if current is not None:
                return current
            taken = set(self._by_ip)
            taken.update(str(ipaddress.IPv4Address(a)) for a in in_use)
            n = self.capacity()
            start = self._cursor
            for i in range(n):
                cand = self._first + (start - self._first + i) % n
                addr = str(ipaddress.IPv4Address(cand))
                if addr not in taken:
                    self._cursor = self._first + (cand - self._first + 1) % n
                    self._take(sandbox_id, addr)
                    return addr
            raise IpamError(f"no free address in {self.network}")

    def _take(self, sandbox_id: str, addr: str) -> None:
        self._by_ip[addr] = sandbox_id
        self._by_id[sandbox_id] = addr

    def release(self, sandbox_id: str) -> str | None:
        with self._lock:
            addr = self._by_id.pop(sandbox_id, None)
            if addr is not None:
                self._by_ip.pop(addr, None)
            return addr

    def reset(self, leases: dict[str, str]) -> None:
        """Replace the held set (sandbox_id -> ip), e.g. after reconcile."""
        with self._lock:
            self._by_ip.clear()
            self._by_id.clear()
            for sid, ip in leases.items():
                addr = str(self._check_usable(ip))
                if self._by_ip.get(addr, sid) != sid:
                    raise IpamError(f"{addr} appears in two leases")
                self._take(sid, addr)
