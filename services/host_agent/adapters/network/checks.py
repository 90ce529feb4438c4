"""Host prerequisites for sandbox networking, for `corral doctor`."""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field


@dataclass
class NetCheck:
    ok: bool
    items: dict[str, tuple[bool, str]] = field(default_factory=dict)


def _tun() -> tuple[bool, str]:
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        os.close(fd)
        return True, "/dev/net/tun opens read-write"
    except OSError as e:
        return False, f"/dev/net/tun: {e.strerror}"


def _bridge() -> tuple[bool, str]:
    from pyroute2 import IPRoute
    name = "crlchk" + secrets.token_hex(3)
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=name, kind="bridge")
            ipr.link("del", index=ipr.link_lookup(ifname=name)[0])
        return True, "bridge create/delete works"
    except Exception as e:  # noqa: BLE001 - report any failure
        return False, f"bridge creation failed: {e}"


_NFT_PROBE = """
add table bridge {t}
add set bridge {t} s {{ type ifname . ether_addr . ipv4_addr; }}
add chain bridge {t} c {{ type filter hook prerouting priority filter; policy accept; }}
add rule bridge {t} c iifname . ether saddr . ip saddr @s accept
add table ip {t}
add chain ip {t} p {{ type nat hook postrouting priority srcnat; policy accept; }}
add rule ip {t} p oifname != "lo" masquerade
"""


def _nft() -> tuple[bool, str]:
    if shutil.which("nft") is None:
        return False, "nft not installed (apt-get install nftables)"
    t = "corral_check_" + secrets.token_hex(3)
    # -c: the kernel validates the whole transaction without committing it.
    p = subprocess.run(["nft", "-c", "-f", "-"], input=_NFT_PROBE.format(t=t),
                       capture_output=True, text=True, timeout=10)
    if p.returncode != 0:
        return False, f"nft rejected the probe ruleset: {p.stderr.strip()}"
    return True, "nft bridge/inet/nat features available"


def check_network() -> NetCheck:
    """Whether /dev/net/tun, bridge creation and nft are usable here."""
    items = {"tun": _tun(), "bridge": _bridge(), "nft": _nft()}
    return NetCheck(all(ok for ok, _ in items.values()), items)
