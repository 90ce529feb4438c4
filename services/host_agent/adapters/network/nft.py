"""nftables rules for one bridge, driven through the `nft` CLI.

Why the CLI: `nft -f -` applies a whole script as one atomic kernel
transaction and `nft -j` gives a stable JSON view; pyroute2's nftables
support is low-level and incomplete (no sets of concatenations, no JSON).

Three tables, all ours (named after the bridge, so several agents or test
runs never touch each other's rules):
- `bridge corral_<br>`: L2 on the guest ports: anti-spoofing (port, MAC, IP
  must match the lease; only IPv4 + ARP, IPv6 is dropped silently since
  guests send RS/DAD by default) and no port-to-port forwarding
  (defence in depth on top of isolated bridge ports).
- `inet corral_<br>`: guests may not reach the host (input) nor each other
  through the router; egress is forwarded only for IPs in set `egress`, and
  never to a destination in `egress_deny`/`egress_deny6` (private, link-local,
  loopback, multicast and reserved ranges, the control plane's addresses, and
  the operator's own) unless the operator allowed it (`egress_allow`). With
  an allow-list, egress reaches nothing else.
- `ip corral_<br>_nat`: masquerade guest traffic leaving via another device.

Per-sandbox state lives only in set elements, so the base chains are static:
`setup` re-declares them (flush + re-add, atomically) without losing sets.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger("corral.host_agent.network")

# Never reachable from a guest, egress on or off (RFC 1918, CGNAT, loopback,
# link-local incl. cloud metadata, "this network", multicast, reserved).
DEFAULT_DENY = ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
                "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
                "::1/128", "fc00::/7", "fe80::/10", "ff00::/8")

NFT = "nft"


class NftError(RuntimeError):
    pass


@dataclass(frozen=True)
class GuestKey:
    """One guest's L2 identity in the `guests` set."""
    tap: str
    mac: str
    ip: str

    def render(self) -> str:
        return f'"{self.tap}" . {self.mac} . {self.ip}'

    def __str__(self) -> str:
        return f"{self.tap}|{self.mac}|{self.ip}"


@dataclass
class NftState:
    ports: set[str]
    guests: set[GuestKey]
    egress: set[str]


async def run_nft(script: str | None = None, *args: str) -> str:
    """Run `nft [args] -f -` with `script` on stdin (or just `nft args`)."""
    argv = [NFT, *args] + (["-f", "-"] if script is not None else [])
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if script is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(script.encode() if script is not None else None)
    if proc.returncode != 0:
        raise NftError(f"nft {' '.join(args)} failed ({proc.returncode}): "
                       f"{err.decode(errors='replace').strip()}")
    return out.decode()


def _split(cidrs: Sequence[str]) -> tuple[list[str], list[str]]:
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    return ([str(n) for n in nets if n.version == 4], [str(n) for n in nets if n.version == 6])


def _elements(family: str, table: str, name: str, values: list[str]) -> str:
    out = f"flush set {family} {table} {name}\n"
    if values:
        out += f"add element {family} {table} {name} {{ {', '.join(values)} }}\n"
    return out


class BridgeRules:
    """Renders and applies the rules of one bridge. `deny`: destinations
    guests never reach, on top of DEFAULT_DENY; `allow`: if given, the only
    destinations egress reaches (and they may lie in a denied range)."""

    def __init__(self, bridge: str, subnet: str, deny: Sequence[str] = (),
                 allow: Sequence[str] = ()) -> None:
        self.bridge = bridge
        self.subnet = subnet
        self.deny4, self.deny6 = _split([*DEFAULT_DENY, *deny])
        self.allow4, allow6 = _split(allow)
        if allow6:
            raise ValueError("guests have no IPv6: an IPv6 egress allow entry cannot apply")
        self.table = f"corral_{bridge}"          # inet and bridge families
        self.nat_table = f"corral_{bridge}_nat"  # ip family

    # --- base ruleset -------------------------------------------------------
    def base_script(self) -> str:
        b, t, n, net = self.bridge, self.table, self.nat_table, self.subnet
        lp = f"corral {b} "
        return f"""
add table bridge {t}
add set bridge {t} ports {{ type ifname; comment "guest ports"; }}
add set bridge {t} guests {{ type ifname . ether_addr . ipv4_addr; comment "port . mac . ip"; }}
add counter bridge {t} spoofed
add counter bridge {t} port_to_port
add chain bridge {t} port_pre {{ type filter hook prerouting priority filter; policy accept; }}
add chain bridge {t} port_fwd {{ type filter hook forward priority filter; policy accept; }}
flush chain bridge {t} port_pre
flush chain bridge {t} port_fwd
add rule bridge {t} port_pre iifname != @ports return
add rule bridge {t} port_pre ether type ip iifname . ether saddr . ip saddr @guests accept
add rule bridge {t} port_pre ether type arp iifname . ether saddr . arp saddr ip @guests iifname . arp saddr ether . arp saddr ip @guests accept
add rule bridge {t} port_pre ether type ip6 drop
add rule bridge {t} port_pre limit rate 6/minute log prefix "{lp}spoof: " level info
add rule bridge {t} port_pre counter name spoofed drop
add rule bridge {t} port_fwd iifname @ports counter name port_to_port drop
add rule bridge {t} port_fwd oifname @ports counter name port_to_port drop

add table inet {t}
add set inet {t} egress {{ type ipv4_addr; comment "guest IPs allowed out"; }}
add set inet {t} egress_deny {{ type ipv4_addr; flags interval; auto-merge; }}
add set inet {t} egress_deny6 {{ type ipv6_addr; flags interval; auto-merge; }}
add set inet {t} egress_allow {{ type ipv4_addr; flags interval; auto-merge; }}
{_elements("inet", t, "egress_deny", self.deny4)}{_elements("inet", t, "egress_deny6", self.deny6)}\
{_elements("inet", t, "egress_allow", self.allow4)}\
add counter inet {t} guest_to_host
add counter inet {t} guest_to_guest
add counter inet {t} egress_denied
add counter inet {t} egress_blocked
add counter inet {t} inbound_denied
add chain inet {t} guest_in {{ type filter hook input priority filter - 10; policy accept; }}
add chain inet {t} guest_fwd {{ type filter hook forward priority filter - 10; policy accept; }}
flush chain inet {t} guest_in
flush chain inet {t} guest_fwd
add rule inet {t} guest_in iifname "{b}" ct state established,related accept
add rule inet {t} guest_in iifname "{b}" limit rate 6/minute log prefix "{lp}to-host: " level info
add rule inet {t} guest_in iifname "{b}" counter name guest_to_host drop
add rule inet {t} guest_fwd iifname "{b}" oifname "{b}" counter name guest_to_guest drop
add rule inet {t} guest_fwd iifname "{b}" ip saddr @egress ip daddr @egress_allow accept
add rule inet {t} guest_fwd iifname "{b}" ip daddr @egress_deny limit rate 6/minute log prefix "{lp}blocked: " level info
add rule inet {t} guest_fwd iifname "{b}" ip daddr @egress_deny counter name egress_blocked drop
add rule inet {t} guest_fwd iifname "{b}" ip6 daddr @egress_deny6 counter name egress_blocked drop
{"" if self.allow4 else f'add rule inet {t} guest_fwd iifname "{b}" ip saddr @egress accept'}
add rule inet {t} guest_fwd iifname "{b}" limit rate 6/minute log prefix "{lp}egress-off: " level info
add rule inet {t} guest_fwd iifname "{b}" counter name egress_denied drop
add rule inet {t} guest_fwd oifname "{b}" ct state established,related accept
add rule inet {t} guest_fwd oifname "{b}" counter name inbound_denied drop

add table ip {n}
add chain ip {n} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
flush chain ip {n} postrouting
add rule ip {n} postrouting ip saddr {net} oifname != "{b}" masquerade
"""

    async def setup(self) -> None:
        await run_nft(self.base_script())

    async def teardown(self) -> None:
        # `add` then `delete` in one transaction: idempotent on nft 1.0.6
        # (which has no `destroy`).
        script = "".join(
            f"add table {fam} {name}\ndelete table {fam} {name}\n"
            for fam, name in (("bridge", self.table), ("inet", self.table),
                              ("ip", self.nat_table)))
        await run_nft(script)

    # --- per-sandbox elements -----------------------------------------------
    def _elements(self, key: GuestKey, egress: bool) -> list[tuple[str, str, str]]:
        els = [("bridge", "ports", f'"{key.tap}"'), ("bridge", "guests", key.render())]
        if egress:
            els.append(("inet", "egress", key.ip))
        return els

    async def add_guest(self, key: GuestKey, egress: bool) -> None:
        await run_nft("".join(
            f"add element {fam} {self.table} {s} {{ {v} }}\n"
            for fam, s, v in self._elements(key, egress)))

    async def remove(self, ports: Sequence[str] = (), guests: Sequence[GuestKey] = (),
                     egress: Sequence[str] = ()) -> None:
        """Remove elements; absent ones are fine (add+delete in one batch)."""
        els = ([("bridge", "ports", f'"{p}"') for p in ports]
               + [("bridge", "guests", g.render()) for g in guests]
               + [("inet", "egress", ip) for ip in egress])
        if not els:
            return
        await run_nft("".join(
            f"add element {fam} {self.table} {s} {{ {v} }}\n"
            f"delete element {fam} {self.table} {s} {{ {v} }}\n"
            for fam, s, v in els))

    async def set_egress(self, ip: str, on: bool) -> None:
        if on:
            await run_nft(f"add element inet {self.table} egress {{ {ip} }}\n")
        else:
            await self.remove(egress=[ip])

    async def exists(self) -> bool:
        out = json.loads(await run_nft(None, "-j", "list", "tables"))
        names = {(t["table"]["family"], t["table"]["name"])
                 for t in out.get("nftables", []) if "table" in t}
        return {("bridge", self.table), ("inet", self.table),
                ("ip", self.nat_table)} <= names

    async def state(self) -> NftState:
        """Current set elements (empty if the tables do not exist)."""
        st = NftState(set(), set(), set())
        if not await self.exists():
            return st
        for fam, name in (("bridge", "ports"), ("bridge", "guests"), ("inet", "egress")):
            out = json.loads(await run_nft(None, "-j", "list", "set", fam, self.table, name))
            for obj in out.get("nftables", []):
                for el in obj.get("set", {}).get("elem", []) or []:
                    if isinstance(el, dict) and "elem" in el:  # with counters etc.
                        el = el["elem"]["val"]
                    if name == "ports":
                        st.ports.add(str(el))
                    elif name == "egress":
                        st.egress.add(str(el))
                    else:
                        tap, mac, ip = el["concat"]
                        st.guests.add(GuestKey(tap, mac, ip))
        return st

    async def counters(self) -> dict[str, int]:
        """Packet counts of our named counters (for tests and diagnostics)."""
        res: dict[str, int] = {}
        for fam in ("bridge", "inet"):
            out = json.loads(await run_nft(None, "-j", "list", "counters", "table", fam,
                                           self.table))
            for obj in out.get("nftables", []):
                c = obj.get("counter")
                if c:
                    res[c["name"]] = c["packets"]
        return res
