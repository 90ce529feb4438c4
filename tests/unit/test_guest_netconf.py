"""Guest agent network identity: ioctl struct packing (ifreq, sockaddr_in, rtentry)
and the ioctl -> `ip -batch` fallback, without touching any real interface."""
import ctypes
import errno
import ipaddress
import socket
import struct

import pytest

from guest import netconf as A
from guest import protocol as P

pytestmark = pytest.mark.unit


class SockaddrIn(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("port", ctypes.c_ushort),
                ("addr", ctypes.c_ubyte * 4), ("zero", ctypes.c_ubyte * 8)]


class Sockaddr(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("data", ctypes.c_ubyte * 14)]


class RtEntry(ctypes.Structure):  # <linux/route.h>
    _fields_ = [("rt_pad1", ctypes.c_ulong), ("rt_dst", Sockaddr), ("rt_gateway", Sockaddr),
                ("rt_genmask", Sockaddr), ("rt_flags", ctypes.c_ushort),
                ("rt_pad2", ctypes.c_short), ("rt_pad3", ctypes.c_ulong),
                ("rt_pad4", ctypes.c_void_p), ("rt_metric", ctypes.c_short),
                ("rt_dev", ctypes.c_char_p), ("rt_mtu", ctypes.c_ulong),
                ("rt_window", ctypes.c_ulong), ("rt_irtt", ctypes.c_ushort)]


class IfConf(ctypes.Structure):
    _fields_ = [("ifc_len", ctypes.c_int), ("ifc_buf", ctypes.c_void_p)]


def test_sockaddr_in_layout():
    raw = A.sockaddr_in("198.18.7.42")
    assert len(raw) == 16 == ctypes.sizeof(SockaddrIn)
    sa = SockaddrIn.from_buffer_copy(raw)
    assert sa.family == socket.AF_INET and sa.port == 0
    assert bytes(sa.addr) == bytes([198, 18, 7, 42]) and bytes(sa.zero) == bytes(8)


def test_ifreq_layouts():
    fl = A.ifreq_flags("eth0", A.IFF_UP | 0x1000)
    assert len(fl) == A.IFREQ_SIZE == 40
    assert fl[:16] == b"eth0" + bytes(12)
    assert struct.unpack_from("h", fl, 16)[0] == 0x1001
    ad = A.ifreq_addr("eth0", "255.255.255.0")
    assert len(ad) == 40 and ad[16:32] == A.sockaddr_in("255.255.255.0")
    hw = A.ifreq_hwaddr("eth0", "02:c0:7e:00:12:ab")
    assert len(hw) == 40
    sa = Sockaddr.from_buffer_copy(hw, 16)
    assert sa.family == A.ARPHRD_ETHER
    assert bytes(sa.data[:6]) == bytes.fromhex("02c07e0012ab") and bytes(sa.data[6:]) == bytes(8)
    assert hw[32:] == bytes(8)


def test_ifreq_rejects_bad_names_and_macs():
    with pytest.raises(P.GuestError):
        A.ifreq_flags("x" * 16, 0)
    with pytest.raises(P.GuestError):
        A.ifreq_flags("", 0)
    with pytest.raises(P.GuestError):
        A.ifreq_hwaddr("eth0", "02:c0:7e:00:12")


def test_rtentry_matches_the_c_layout():
    assert A.RTENTRY.size == ctypes.sizeof(RtEntry)
    raw = A.rtentry_default("198.18.7.1")
    rt = RtEntry.from_buffer_copy(raw)
    assert rt.rt_flags == A.RTF_UP | A.RTF_GATEWAY
    assert bytes(rt.rt_dst) == A.sockaddr_in("0.0.0.0")
    assert bytes(rt.rt_genmask) == A.sockaddr_in("0.0.0.0")
    assert bytes(rt.rt_gateway) == A.sockaddr_in("198.18.7.1")
    assert rt.rt_dev is None and rt.rt_metric == 0 and rt.rt_mtu == 0


def test_ifconf_layout_and_parsing():
    assert A.IFCONF.size == ctypes.sizeof(IfConf)
    entries = b"".join(A.ifreq_addr(n, ip) for n, ip in
                       (("lo", "127.0.0.1"), ("eth0", "198.18.7.2"), ("eth0:1", "10.0.0.1")))
    assert A.ifconf_names(entries + bytes(40), len(entries)) == ["lo", "eth0", "eth0:1"]
    assert A.ifconf_names(entries, 0) == []


def _fake_ioctls(calls, flags, busy=False):
    def fake_ioctl(fd, req, arg=0):
        calls.append((req, arg))
        if req == A.SIOCGIFFLAGS:
            return A.ifreq_flags("eth0", flags)
        if req == A.SIOCGIFCONF:
            return A.IFCONF.pack(40, 0)  # buffer stays zeroed: one empty-named entry
        if req == A.SIOCSIFHWADDR and busy and [r for r, _ in calls].count(req) == 1:
            raise OSError(errno.EBUSY, "busy")
        return arg
    return fake_ioctl


def test_ioctl_sequence_on_a_link_that_is_up(monkeypatch):
    """A restored template's eth0 is up: MAC and address change live, no down/up."""
    calls = []
    monkeypatch.setattr(A.fcntl, "ioctl", _fake_ioctls(calls, 0x1043))
    A.set_net_ioctl("eth0", "02:c0:7e:00:00:09", ipaddress.IPv4Interface("198.18.7.9/24"),
                    ipaddress.IPv4Address("198.18.7.1"))
    reqs = [r for r, _ in calls]
    assert reqs == [A.SIOCGIFCONF, A.SIOCGIFFLAGS, A.SIOCSIFHWADDR,
                    A.SIOCSIFADDR, A.SIOCSIFNETMASK, A.SIOCADDRT]
    assert calls[2][1] == A.ifreq_hwaddr("eth0", "02:c0:7e:00:00:09")
    assert calls[3][1] == A.ifreq_addr("eth0", "198.18.7.9")
    assert calls[4][1] == A.ifreq_addr("eth0", "255.255.255.0")
    assert calls[5][1] == A.rtentry_default("198.18.7.1")


def test_ioctl_sequence_brings_a_down_link_up(monkeypatch):
    calls = []
    monkeypatch.setattr(A.fcntl, "ioctl", _fake_ioctls(calls, 0x1042))
    A.set_net_ioctl("eth0", "02:c0:7e:00:00:09", ipaddress.IPv4Interface("198.18.7.9/24"), None)
    reqs = [r for r, _ in calls]
    assert reqs == [A.SIOCGIFCONF, A.SIOCGIFFLAGS, A.SIOCSIFHWADDR,
                    A.SIOCSIFADDR, A.SIOCSIFNETMASK, A.SIOCSIFFLAGS]
    assert calls[-1][1] == A.ifreq_flags("eth0", 0x1043)


def test_driver_refusing_a_live_mac_change_gets_a_down_up_cycle(monkeypatch):
    calls = []
    monkeypatch.setattr(A.fcntl, "ioctl", _fake_ioctls(calls, 0x1043, busy=True))
    A.set_net_ioctl("eth0", "02:c0:7e:00:00:09", ipaddress.IPv4Interface("198.18.7.9/24"), None)
    reqs = [r for r, _ in calls]
    assert reqs == [A.SIOCGIFCONF, A.SIOCGIFFLAGS, A.SIOCSIFHWADDR, A.SIOCSIFFLAGS,
                    A.SIOCSIFHWADDR, A.SIOCSIFADDR, A.SIOCSIFNETMASK, A.SIOCSIFFLAGS]
    assert calls[3][1] == A.ifreq_flags("eth0", 0x1042)  # down
    assert calls[-1][1] == A.ifreq_flags("eth0", 0x1043)  # up again


def test_route_exists_is_replaced(monkeypatch):
    seen = []

    def fake_ioctl(fd, req, arg=0):
        seen.append(req)
        if req == A.SIOCGIFCONF:
            return A.IFCONF.pack(0, 0)
        if req == A.SIOCGIFFLAGS:
            return A.ifreq_flags("eth0", 0)
        if req == A.SIOCADDRT and seen.count(A.SIOCADDRT) == 1:
            raise OSError(errno.EEXIST, "exists")
        return arg

    monkeypatch.setattr(A.fcntl, "ioctl", fake_ioctl)
    A.set_net_ioctl("eth0", "02:c0:7e:00:00:09", ipaddress.IPv4Interface("198.18.7.9/24"),
                    ipaddress.IPv4Address("198.18.7.1"))
    assert seen[-3:] == [A.SIOCADDRT, A.SIOCDELRT, A.SIOCADDRT]


def test_set_net_falls_back_to_ip(monkeypatch):
    def failing(*_a):
        raise OSError(errno.EPERM, "nope")

    used = []
    monkeypatch.setattr(A, "set_net_ioctl", failing)
    monkeypatch.setattr(A, "set_net_ip", lambda *a: used.append(a))
    net = {"mac": "02:C0:7E:00:00:09", "ip": "198.18.7.9", "prefix_len": 24,
           "gateway": "198.18.7.1"}
    assert A.set_net(net) == "ip"
    dev, mac, iface, gw = used[0]
    assert (dev, mac, iface.with_prefixlen, gw) == ("eth0", "02:c0:7e:00:00:09",
                                                    "198.18.7.9/24", "198.18.7.1")
    monkeypatch.setattr(A, "set_net_ioctl", lambda *a: None)
    assert A.set_net(net) == "ioctl"
    with pytest.raises(P.GuestError):
        A.set_net({**net, "mac": "02:c0:7e:00:00"})


@pytest.mark.parametrize("ip,plen,mask", [("198.18.7.9", 24, "255.255.255.0"),
                                          ("10.0.0.1", 30, "255.255.255.252"),
                                          ("10.0.0.1", 0, "0.0.0.0"),
                                          ("10.0.0.1", 32, "255.255.255.255")])
def test_parse_ifaddr_matches_ipaddress(ip, plen, mask):
    got = A.parse_ifaddr(ip, plen)
    ref = ipaddress.IPv4Interface(f"{ip}/{plen}")
    assert got == (str(ref.ip), str(ref.netmask), ref.with_prefixlen) and got.netmask == mask


@pytest.mark.parametrize("bad", ["1.2.3", "1.2.3.4.5", "256.1.1.1", "a.b.c.d", "1.2.3.-4",
                                 "", "1..2.3", "1.2.3.4 "])
def test_parse_ipv4_rejects_malformed(bad):
    with pytest.raises(A.P.GuestError):
        A.parse_ipv4(bad)


@pytest.mark.parametrize("plen", [-1, 33])
def test_parse_ifaddr_rejects_prefix_out_of_range(plen):
    with pytest.raises(A.P.GuestError):
        A.parse_ifaddr("10.0.0.1", plen)
