"""HostNetwork: bridge + one port (TAP) per sandbox + nftables isolation.

Isolation, in layers:
1. bridge ports are `isolated` (kernel never forwards port to port), with
   learning and unknown-unicast flooding off and a static fdb entry per
   guest MAC;
2. `bridge` family nft: a port may only send IPv4/ARP from its lease's
   MAC+IP, and port-to-port forwarding is dropped;
3. `inet` family nft: nothing from the bridge reaches the host (input),
   guest-to-guest via the router is dropped, egress is forwarded only for
   IPs in set `egress`, never to private, link-local or control-plane
   addresses, and masqueraded (`ip` nat table); turning egress off or
   releasing the lease also ends the flows conntrack still tracks.

Every kernel object is reported through `record` the moment it exists, and
a failed `allocate` removes what it created.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pyroute2 import IPRoute

from ...application.ports import ResourceRecorder
from . import bridge as br
from . import tap as tp
from .conntrack import forget_flows
from .ipam import IFNAME_RE, Ipam, bridge_mac, guest_mac, tap_name
from .nft import BridgeRules, GuestKey

log = logging.getLogger("corral.host_agent.network")


class NetworkError(RuntimeError):
    pass


@dataclass(frozen=True)
class NetLease:
    sandbox_id: str
    tap: str
    mac: str
    ip: str
    gateway: str
    prefix_len: int
    egress: bool


@dataclass(frozen=True)
class OwnedResource:
    kind: str   # "link" | "port" | "guest" | "egress"
    key: str    # link/port: tap name; guest: "tap|mac|ip"; egress: ip
    sandbox_id: str | None = None  # known for links (from their ifalias)


class HostNetwork:
    def __init__(self, bridge: str = "corral0", subnet: str = "10.88.0.0/16", *,
                 uplinks: Iterable[str] | None = None, port_kind: str = "tap",
                 tap_uid: int | None = None, tap_gid: int | None = None,
                 egress_deny: Sequence[str] = (), egress_allow: Sequence[str] = ()) -> None:
        """`uplinks`: if given, forwarding is enabled only on the bridge and
        these interfaces instead of globally (net.ipv4.ip_forward).
        `egress_deny`: destinations no guest reaches, on top of the private and
        reserved ranges (nft.DEFAULT_DENY); `egress_allow`: if given, the only
        destinations egress reaches.
        `port_kind="veth"` makes a veth pair per sandbox instead of a TAP (the
        guest end is `ipam.veth_peer_name(tap)`): for tests without VMs."""
        if not IFNAME_RE.match(bridge):
            raise ValueError(f"invalid bridge name {bridge!r}")
        if port_kind not in ("tap", "veth"):
            raise ValueError("port_kind must be 'tap' or 'veth'")
        self.bridge = bridge
        self._ipam = Ipam(subnet)
        self.subnet = str(self._ipam.network)
        self.gateway = str(self._ipam.gateway)
        self.prefix_len = self._ipam.prefix_len
        self.rules = BridgeRules(bridge, self.subnet, egress_deny, egress_allow)
        self._uplinks = None if uplinks is None else list(uplinks)
        self._port_kind = port_kind
        # TAPs are owned by the agent's uid unless told otherwise (qemu run
        # as that uid may open them without CAP_NET_ADMIN).
        self._tap_uid = os.geteuid() if tap_uid is None else tap_uid
        self._tap_gid = tap_gid
        self._leases: dict[str, NetLease] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._fwd_lock = asyncio.Lock()
        self._fwd_done = False

    # --- lifecycle ----------------------------------------------------------
    async def setup(self) -> None:
        """Create bridge and tables; idempotent, keeps existing set elements."""
        t0 = time.perf_counter()
        await asyncio.to_thread(self._setup_bridge)
        await self.rules.setup()
        log.info("network %s ready: %s gw %s (%.1f ms)", self.bridge, self.subnet,
                 self.gateway, (time.perf_counter() - t0) * 1e3)

    def _setup_bridge(self) -> None:
        with IPRoute() as ipr:
            br.check_subnet_free(ipr, self.bridge, self.subnet)
        br.ensure_bridge(self.bridge, self.gateway, self.prefix_len, bridge_mac(self.bridge))

    async def teardown(self) -> None:
        """Remove every port, the tables and the bridge (tests/dev)."""
        t0 = time.perf_counter()
        for p in await asyncio.to_thread(tp.list_ports, self.bridge):
            await asyncio.to_thread(br.delete_link, p.name)
        await self.rules.teardown()
        await asyncio.to_thread(br.delete_link, self.bridge)
        self._leases.clear()
        self._ipam.reset({})
        log.info("network %s torn down (%.1f ms)", self.bridge,
                 (time.perf_counter() - t0) * 1e3)

    # --- per sandbox --------------------------------------------------------
    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def lease(self, sandbox_id: str) -> NetLease | None:
        return self._leases.get(sandbox_id)

    async def allocate(self, sandbox_id: str, egress: bool = False, ip: str | None = None,
                       in_use: Iterable[str] = frozenset(),
                       record: ResourceRecorder | None = None) -> NetLease:
        """Create the sandbox's port and rules; returns its lease.

        `in_use`: addresses taken according to the caller's durable records.
        `ip`: re-create a known lease with this address. Idempotent for a
        sandbox that already has a lease in this process.
        """
        async with self._lock(sandbox_id):
            cur = self._leases.get(sandbox_id)
            if cur is not None:
                if ip is not None and ip != cur.ip:
                    raise NetworkError(f"{sandbox_id} already has {cur.ip}")
                return cur if cur.egress == egress else await self._set_egress(cur, egress)
            tap = tap_name(sandbox_id)
            if any(ls.tap == tap for ls in self._leases.values()):
                raise NetworkError(f"tap name collision for {sandbox_id}")
            addr = self._ipam.reserve(sandbox_id, ip, in_use)  # the commit step
            lease = NetLease(sandbox_id, tap, guest_mac(sandbox_id), addr,
                             self.gateway, self.prefix_len, egress)
            key = GuestKey(tap, lease.mac, addr)
            t0 = time.perf_counter()
            link_tried = rules_tried = False
            try:
                if egress:
                    await self._ensure_forwarding()
                link_tried = True  # set first: a cancelled thread may still create it
                await asyncio.to_thread(self._create_port, tap, lease.mac)
                await _record(record, sandbox_id, "tap", tap)
                rules_tried = True
                await self.rules.add_guest(key, egress)  # one atomic transaction
                await _record(record, sandbox_id, "nft", str(key))
                await asyncio.to_thread(tp.attach, tap, self.bridge,
                                        tp.alias_for(self.bridge, sandbox_id), lease.mac)
            except BaseException as e:
                log.warning("allocate %s failed (%r); removing what was created",
                            sandbox_id, e)
                await self._compensate(sandbox_id, tap, key, link_tried, rules_tried, record)
                raise
            self._leases[sandbox_id] = lease
            ms = (time.perf_counter() - t0) * 1e3
            log.info("sandbox %s: %s %s %s egress=%s (%.1f ms)", sandbox_id, tap,
                     lease.mac, addr, egress, ms,
                     extra={"sandbox_id": sandbox_id, "stage": "network", "ms": round(ms, 1)})
            return lease

    def _create_port(self, tap: str, mac: str) -> None:
        if self._port_kind == "tap":
            tp.create_tap(tap, self._tap_uid, self._tap_gid)
        else:
            tp.create_veth(tap, mac)

    async def _compensate(self, sandbox_id: str, tap: str, key: GuestKey,
                          link: bool, rules: bool, record: ResourceRecorder | None) -> None:
        try:
            if rules:
                await self.rules.remove([tap], [key], [key.ip])
                await _record(record, sandbox_id, "nft", None, quiet=True)
            if link:
                await asyncio.to_thread(br.delete_link, tap)
                await _record(record, sandbox_id, "tap", None, quiet=True)
        except Exception:
            log.exception("compensation for %s incomplete; reconcile will retry", sandbox_id)
        finally:
            self._ipam.release(sandbox_id)

    async def set_egress(self, sandbox_id: str, on: bool) -> NetLease:
        async with self._lock(sandbox_id):
            cur = self._leases.get(sandbox_id)
            if cur is None:
                raise NetworkError(f"no lease for {sandbox_id}")
            return await self._set_egress(cur, on)

    async def _set_egress(self, cur: NetLease, on: bool) -> NetLease:
        if on:
            await self._ensure_forwarding()
        await self.rules.set_egress(cur.ip, on)
        if not on:  # flows it opened while allowed end now, not when they idle out
            await asyncio.to_thread(forget_flows, cur.ip)
        new = dataclasses.replace(cur, egress=on)
        self._leases[cur.sandbox_id] = new
        log.info("sandbox %s: egress %s", cur.sandbox_id, "on" if on else "off")
        return new

    async def release(self, sandbox_id: str, record: ResourceRecorder | None = None) -> None:
        """Remove the port and every rule of the sandbox; idempotent."""
        async with self._lock(sandbox_id):
            lease = self._leases.get(sandbox_id)
            tap = tap_name(sandbox_id)
            await asyncio.to_thread(br.delete_link, tap)  # veth: takes the peer too
            if lease is not None:
                key = GuestKey(lease.tap, lease.mac, lease.ip)
                await self.rules.remove([tap], [key], [lease.ip])
                ips = [lease.ip]
            else:  # not in memory (e.g. after a restart): look the keys up
                st = await self.rules.state()
                guests = [g for g in st.guests if g.tap == tap]
                await self.rules.remove([tap] if tap in st.ports else [], guests,
                                        [g.ip for g in guests if g.ip in st.egress])
                ips = [g.ip for g in guests]
            for ip in ips:  # the address may be leased again: it inherits no flow
                await asyncio.to_thread(forget_flows, ip)
            self._leases.pop(sandbox_id, None)
            self._ipam.release(sandbox_id)
            await _record(record, sandbox_id, "nft", None)
            await _record(record, sandbox_id, "tap", None)
            log.info("sandbox %s: network released", sandbox_id)
        lk = self._locks.get(sandbox_id)
        if lk is not None and not lk.locked() and not getattr(lk, "_waiters", None):
            del self._locks[sandbox_id]

    # --- inventory and recovery ---------------------------------------------
    async def list_owned(self) -> list[OwnedResource]:
        ports = await asyncio.to_thread(tp.list_ports, self.bridge)
        st = await self.rules.state()
        return ([OwnedResource("link", p.name, p.sandbox_id) for p in ports]
                + [OwnedResource("port", t) for t in sorted(st.ports)]
                + [OwnedResource("guest", str(g)) for g in sorted(st.guests, key=str)]
                + [OwnedResource("egress", ip) for ip in sorted(st.egress)])

    def lease_from_record(self, sandbox_id: str, value: str) -> NetLease:
        return lease_from_record(sandbox_id, value)

    async def reconcile(self, known: dict[str, NetLease]) -> dict[str, list[str]]:
        """Make the host match `known` (from durable records); call after setup().

        Removes ports and set elements we own but that are not known, re-adds
        missing elements for known leases whose port exists, and reloads the
        in-memory leases and IPAM from `known`. Known leases without a port
        are reported as `missing` (their VM is gone; the caller decides).
        """
        by_tap = {ls.tap: ls for ls in known.values()}
        ports = await asyncio.to_thread(tp.list_ports, self.bridge)
        st = await self.rules.state()
        removed: list[str] = []
        for p in ports:
            if p.name not in by_tap:
                await asyncio.to_thread(br.delete_link, p.name)
                removed.append(f"link:{p.name}")
        stale_ports = [t for t in st.ports if t not in by_tap]
        stale_guests = [g for g in st.guests if (ls := by_tap.get(g.tap)) is None
                        or (g.mac, g.ip) != (ls.mac, ls.ip)]
        want_egress = {ls.ip for ls in known.values() if ls.egress}
        stale_egress = [ip for ip in st.egress if ip not in want_egress]
        await self.rules.remove(stale_ports, stale_guests, stale_egress)
        removed += ([f"port:{t}" for t in stale_ports] + [f"guest:{g}" for g in stale_guests]
                    + [f"egress:{ip}" for ip in stale_egress])

        self._ipam.reset({sid: ls.ip for sid, ls in known.items()})
        self._leases = dict(known)
        live = {p.name for p in ports}
        repaired, missing = [], []
        for sid, ls in known.items():
            if ls.tap not in live:
                missing.append(sid)
                continue
            key = GuestKey(ls.tap, ls.mac, ls.ip)
            in_rules = ls.tap in st.ports and key in st.guests
            if not in_rules or (ls.egress and ls.ip not in st.egress):
                if ls.egress:
                    await self._ensure_forwarding()
                await self.rules.add_guest(key, ls.egress)
                repaired.append(sid)
        report = {"removed": sorted(removed), "repaired": repaired, "missing": missing}
        log.info("network %s reconciled: %s", self.bridge, report)
        return report

    async def _ensure_forwarding(self) -> None:
        if self._fwd_done:
            return
        async with self._fwd_lock:
            if self._fwd_done:
                return
            ifs = None if self._uplinks is None else [self.bridge, *self._uplinks]
            changed = await asyncio.to_thread(br.enable_forwarding, ifs)
            if changed:
                log.warning("enabled IPv4 forwarding for sandbox egress: %s", ", ".join(changed))
            self._fwd_done = True


def lease_from_record(sandbox_id: str, value: str) -> NetLease:
    """Inverse of the driver's `lease_record`: tap|mac|ip|gw|prefix|egress."""
    tap, mac, ip, gw, prefix, egress = value.split("|")
    return NetLease(sandbox_id, tap, mac, ip, gw, int(prefix), egress == "1")


async def _record(record: ResourceRecorder | None, sandbox_id: str, kind: str,
                  value: str | None, quiet: bool = False) -> None:
    if record is None:
        return
    try:
        await record(sandbox_id, kind, value)
    except Exception:
        if not quiet:
            raise
        log.exception("recording %s=%s for %s failed", kind, value, sandbox_id)
