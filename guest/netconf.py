"""The clone's network identity, set by ioctl: MAC, one IPv4 address, default route.

No process to start (an `ip` exec costs ~0.3 s under TCG); `ip -batch` is the
fallback when an ioctl fails. Numbers from <linux/sockios.h>, <linux/if.h>,
<linux/route.h>.
"""
from __future__ import annotations

import array
import errno
import fcntl
import socket
import struct
import subprocess
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING or __package__:
    from . import protocol as P
    from .console import log
else:  # inside the guest: the modules sit side by side
    import protocol as P
    from console import log

MAC_RE_CHARS = set("0123456789abcdef:")
SIOCADDRT = 0x890B
SIOCDELRT = 0x890C
SIOCGIFCONF = 0x8912
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFADDR = 0x8916
SIOCSIFNETMASK = 0x891C
SIOCSIFHWADDR = 0x8924
IFF_UP = 0x1
ARPHRD_ETHER = 1
RTF_UP = 0x1
RTF_GATEWAY = 0x2
IFREQ_SIZE = 40  # struct ifreq: char[16] name + a 24-byte union
# struct rtentry (native layout): rt_pad1, rt_dst, rt_gateway, rt_genmask,
# rt_flags, rt_pad2, rt_pad3, rt_pad4, rt_metric, rt_dev, rt_mtu, rt_window,
# rt_irtt; the trailing "0L" pads to the struct's alignment.
RTENTRY = struct.Struct("@L16s16s16sHhLPhPLLH0L")
IFCONF = struct.Struct("@iP")  # struct ifconf: int ifc_len; char *ifc_buf


def _ifname(dev: str) -> bytes:
    name = dev.encode()
    if not name or len(name) > 15:
        raise P.GuestError("EINVAL", "bad dev")
    return name


def sockaddr_in(addr: str) -> bytes:
    """struct sockaddr_in (16 bytes): family (host order), port 0, address, zero pad."""
    return struct.pack("=HH4s8x", socket.AF_INET, 0, socket.inet_aton(addr))


def ifreq_flags(dev: str, flags: int) -> bytes:
    return struct.pack("16sh", _ifname(dev), flags).ljust(IFREQ_SIZE, b"\0")


def ifreq_addr(dev: str, addr: str) -> bytes:
    return (struct.pack("16s", _ifname(dev)) + sockaddr_in(addr)).ljust(IFREQ_SIZE, b"\0")


def ifreq_hwaddr(dev: str, mac: str) -> bytes:
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise P.GuestError("EINVAL", "bad mac")
    sa = struct.pack("=H14s", ARPHRD_ETHER, raw)
    return (struct.pack("16s", _ifname(dev)) + sa).ljust(IFREQ_SIZE, b"\0")


def rtentry_default(gateway: str) -> bytes:
    """A default route via `gateway`; rt_dev NULL: the kernel picks the device
    whose connected subnet holds the gateway."""
    any4 = sockaddr_in("0.0.0.0")
    return RTENTRY.pack(0, any4, sockaddr_in(gateway), any4, RTF_UP | RTF_GATEWAY,
                        0, 0, 0, 0, 0, 0, 0, 0)


def ifconf_names(raw: bytes, length: int) -> list[str]:
    """Interface labels (e.g. "eth0", "eth0:1") of the IPv4 addresses SIOCGIFCONF returned."""
    return [raw[o:o + 16].split(b"\0", 1)[0].decode(errors="replace")
            for o in range(0, length - IFREQ_SIZE + 1, IFREQ_SIZE)]


def ipv4_labels(fd: int) -> list[str]:
    buf = array.array("B", bytes(IFREQ_SIZE * 64))
    addr, _ = buf.buffer_info()
    n = IFCONF.unpack(fcntl.ioctl(fd, SIOCGIFCONF, IFCONF.pack(len(buf), addr)))[0]
    return ifconf_names(buf.tobytes(), n)


class IfAddr(NamedTuple):
    """What set_net needs of an IPv4 interface address (ipaddress.IPv4Interface
    has the same attributes, but costs ~8 ms of cold code after a restore)."""
    ip: str
    netmask: str
    with_prefixlen: str


def parse_ipv4(s: str) -> str:
    parts = str(s).split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and int(p) <= 255
                                  for p in parts):
        raise P.GuestError("EINVAL", f"bad IPv4 address {s!r}")
    return ".".join(str(int(p)) for p in parts)


def parse_ifaddr(ip: str, prefix_len: int) -> IfAddr:
    ip, prefix_len = parse_ipv4(ip), int(prefix_len)
    if not 0 <= prefix_len <= 32:
        raise P.GuestError("EINVAL", f"bad prefix length {prefix_len}")
    mask = socket.inet_ntoa(((0xFFFFFFFF << (32 - prefix_len)) & 0xFFFFFFFF).to_bytes(4, "big"))
    return IfAddr(ip, mask, f"{ip}/{prefix_len}")


def set_net_ioctl(dev: str, mac: str, iface: IfAddr, gw: str | None,
                  sock: socket.socket | None = None) -> None:
    """MAC, address + netmask (replaces the primary IPv4 address), up, default route.

    The MAC changes while the link is up (virtio-net tells the device; the
    kernel flushes the device's ARP entries on the change): a down/up cycle
    costs ~50 ms of cold code under TCG after a restore. Only a driver that
    refuses a live change (EBUSY) gets the cycle. `sock`: an AF_INET socket to
    use (the agent keeps one open, so a restored clone skips socket())."""
    own = sock is None
    s = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        fd = s.fileno()
        # SIOCSIFADDR/SIOCSIFNETMASK act on the device's first address only:
        # with more than one (no flush by ioctl) leave it to `ip`.
        n_addrs = sum(1 for n in ipv4_labels(fd) if n == dev or n.startswith(dev + ":"))
        if n_addrs > 1:
            raise OSError(errno.ENOTSUP, f"{dev} has {n_addrs} IPv4 addresses")
        flags = struct.unpack_from("16sh", fcntl.ioctl(fd, SIOCGIFFLAGS, ifreq_flags(dev, 0)))[1]
        try:
            fcntl.ioctl(fd, SIOCSIFHWADDR, ifreq_hwaddr(dev, mac))
        except OSError as e:
            if e.errno != errno.EBUSY or not flags & IFF_UP:
                raise
            fcntl.ioctl(fd, SIOCSIFFLAGS, ifreq_flags(dev, flags & ~IFF_UP))
            fcntl.ioctl(fd, SIOCSIFHWADDR, ifreq_hwaddr(dev, mac))
            flags &= ~IFF_UP
        fcntl.ioctl(fd, SIOCSIFADDR, ifreq_addr(dev, str(iface.ip)))
        fcntl.ioctl(fd, SIOCSIFNETMASK, ifreq_addr(dev, str(iface.netmask)))
        if not flags & IFF_UP:
            fcntl.ioctl(fd, SIOCSIFFLAGS, ifreq_flags(dev, flags | IFF_UP))
        if gw is not None:
            rt = rtentry_default(str(gw))
            try:
                fcntl.ioctl(fd, SIOCADDRT, rt)
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
                fcntl.ioctl(fd, SIOCDELRT, rt)
                fcntl.ioctl(fd, SIOCADDRT, rt)
    finally:
        if own:
            s.close()


def set_net_ip(dev: str, mac: str, iface: IfAddr, gw: str | None) -> None:
    cmds = [f"link set dev {dev} down", f"addr flush dev {dev}",
            f"link set dev {dev} address {mac}", f"link set dev {dev} up",
            f"addr add {iface.with_prefixlen} dev {dev}"]
    if gw is not None:
        cmds.append(f"route replace default via {gw} dev {dev}")
    r = subprocess.run(["ip", "-batch", "-"], input="\n".join(cmds) + "\n",
                       capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        raise P.GuestError("EIO", f"ip: {r.stderr.strip()[-300:]}")


def set_net(net: dict, sock: socket.socket | None = None) -> str:
    """Give eth0 a new identity: MAC, one IPv4 address/prefix, default route.

    Returns how: "ioctl", or "ip" when an ioctl failed and `ip -batch` did it."""
    dev = str(net.get("dev") or "eth0")
    mac = str(net["mac"]).lower()
    if len(mac) != 17 or not set(mac) <= MAC_RE_CHARS or not dev.isalnum() or len(dev) > 15:
        raise P.GuestError("EINVAL", "bad mac or dev")
    iface = parse_ifaddr(net["ip"], net["prefix_len"])
    gw = parse_ipv4(net["gateway"]) if net.get("gateway") else None
    try:
        set_net_ioctl(dev, mac, iface, gw, sock)
        return "ioctl"
    except OSError as e:
        log(f"net ioctl: {e}; falling back to ip -batch")
    set_net_ip(dev, mac, iface, gw)
    return "ip"
