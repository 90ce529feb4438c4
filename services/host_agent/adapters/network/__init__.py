"""Host networking for sandboxes: bridge, TAPs, IPAM and nftables isolation."""
from .checks import NetCheck, check_network
from .host_network import HostNetwork, NetLease, NetworkError, OwnedResource
from .ipam import IpamError, guest_mac, tap_name, veth_peer_name

__all__ = [
           "HostNetwork",
           "IpamError",
           "NetCheck",
           "NetLease",
           "NetworkError",
           "OwnedResource",
           "check_network",
           "guest_mac",
           "tap_name",
           "veth_peer_name",
]
