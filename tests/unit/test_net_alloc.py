"""Naming, MAC and IP allocation logic of the host network (no I/O)."""
import ipaddress
import threading

import pytest

from services.host_agent.adapters.network.ipam import (Ipam, IpamError, bridge_mac, guest_mac,
                                                       is_tap_name, tap_name, veth_peer_name)

pytestmark = pytest.mark.unit


def test_tap_name_is_short_stable_and_distinct():
    a, b = tap_name("sbx-01HZX0000000000000000000A"), tap_name("sbx-01HZX0000000000000000000B")
    assert a == tap_name("sbx-01HZX0000000000000000000A")
    assert a != b  # same prefix, different hash
    assert len(a) <= 15 and is_tap_name(a)
    assert len(veth_peer_name(a)) <= 15 and veth_peer_name(a) != a
    assert not is_tap_name("tap0") and not is_tap_name("tapXYZXYZXYZXYZ")


@pytest.mark.parametrize("bad", ["", "a b", "x\n", "\x00", "a" * 256])
def test_bad_ids_rejected(bad):
    with pytest.raises(ValueError):
        tap_name(bad)


def test_mac_is_locally_administered_unicast_and_stable():
    macs = {guest_mac(f"s{i}") for i in range(2000)}
    assert len(macs) == 2000
    for m in list(macs)[:200] + [bridge_mac("corral0")]:
        first = int(m.split(":")[0], 16)
        assert first & 0x02 and not first & 0x01
        assert len(m.split(":")) == 6
    assert guest_mac("s1") == guest_mac("s1")


def test_gateway_is_first_host_and_allocation_skips_it():
    ip = Ipam("10.9.0.0/29")
    assert str(ip.gateway) == "10.9.0.1" and ip.prefix_len == 29
    got = [ip.reserve(f"s{i}") for i in range(5)]
    assert got == [f"10.9.0.{i}" for i in range(2, 7)]  # .0/.1/.7 never
    with pytest.raises(IpamError):
        ip.reserve("one-too-many")


def test_reserve_is_idempotent_and_release_frees():
    ip = Ipam("10.9.0.0/29")
    a = ip.reserve("s1")
    assert ip.reserve("s1") == a
    assert ip.release("s1") == a and ip.release("s1") is None
    assert ip.held() == {}


def test_in_use_from_durable_records_is_respected():
    ip = Ipam("10.9.0.0/28")
    in_use = {"10.9.0.2", "10.9.0.3", "10.9.0.5"}
    got = {ip.reserve(f"s{i}", in_use=in_use) for i in range(10)}
    assert not got & in_use and len(got) == 10
    with pytest.raises(IpamError):
        ip.reserve("full", in_use=in_use)


def test_round_robin_does_not_reuse_a_just_freed_address():
    ip = Ipam("10.9.0.0/24")
    a = ip.reserve("a")
    ip.release("a")
    assert ip.reserve("b") != a


def test_explicit_ip_recreates_a_lease_and_detects_conflicts():
    ip = Ipam("10.9.0.0/24")
    assert ip.reserve("s1", ip="10.9.0.50", in_use={"10.9.0.50"}) == "10.9.0.50"
    with pytest.raises(IpamError):
        ip.reserve("s2", ip="10.9.0.50")
    with pytest.raises(IpamError):
        ip.reserve("s1", ip="10.9.0.51")  # s1 already holds .50
    for bad in ("10.9.0.0", "10.9.0.1", "10.9.0.255", "10.10.0.5", "nope"):
        with pytest.raises(IpamError):
            ip.reserve("s3", ip=bad)
    assert "10.9.0.50" not in {ip.reserve(f"n{i}") for i in range(50)}


def test_reset_loads_leases_and_rejects_duplicates():
    ip = Ipam("10.9.0.0/24")
    ip.reset({"a": "10.9.0.7", "b": "10.9.0.8"})
    assert ip.held() == {"a": "10.9.0.7", "b": "10.9.0.8"}
    assert ip.reserve("c") not in {"10.9.0.7", "10.9.0.8"}
    with pytest.raises(IpamError):
        ip.reset({"a": "10.9.0.7", "b": "10.9.0.7"})


def test_concurrent_threads_never_share_an_address():
    ip = Ipam("10.9.0.0/22")
    out: list[str] = []
    lock = threading.Lock()

    def worker(n):
        for i in range(100):
            a = ip.reserve(f"t{n}-{i}")
            with lock:
                out.append(a)

    ts = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(out) == 800 == len(set(out))
    assert all(ipaddress.IPv4Address(a) in ip.network for a in out)


def test_small_or_invalid_subnets_rejected():
    with pytest.raises(ValueError):
        Ipam("10.0.0.0/30")
    with pytest.raises(ValueError):
        Ipam("10.0.0.1/24")  # host bits set
