"""What a host's guests may not reach beyond the private ranges: the control
plane's own addresses (resolved from its settings) and the operator's."""
from __future__ import annotations

import logging
import socket
from urllib.parse import urlparse

log = logging.getLogger("corral.host_agent.network")


def control_plane_addresses(nats_url: str, store: str) -> list[str]:
    """Where the agent's bus and store live: never a guest's destination."""
    hosts = [urlparse(u).hostname for u in nats_url.split(",")]
    if store.startswith("postgresql"):
        hosts.append(urlparse(store).hostname)
    out: set[str] = set()
    for host in filter(None, hosts):
        try:
            out |= {str(info[4][0]).split("%")[0] for info in socket.getaddrinfo(host, None)}
        except OSError:
            log.warning("cannot resolve control-plane host %s for the egress deny list", host)
    return sorted(out)
