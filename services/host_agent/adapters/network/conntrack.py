"""Connection tracking: forget a guest's flows (egress turned off, lease
released), so no established connection outlives the rule that allowed it
and a reused address inherits nothing. Netlink via pyroute2; sync: run it
in a worker thread."""
from __future__ import annotations

import logging

from pyroute2 import Conntrack
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

log = logging.getLogger("corral.host_agent.network")


def forget_flows(ip: str) -> int:
    """Delete every conntrack entry from or to `ip` (original direction);
    returns how many. Missing conntrack support means there is nothing to forget."""
    gone = 0
    try:
        with Conntrack() as ct:
            for orig in (NFCTAttrTuple(saddr=ip), NFCTAttrTuple(daddr=ip)):
                for entry in list(ct.dump_entries(tuple_orig=orig)):
                    try:
                        ct.delete(entry)
                        gone += 1
                    except OSError:  # expired meanwhile
                        pass
    except FileNotFoundError:
        return 0
    if gone:
        log.info("forgot %d tracked flows of %s", gone, ip)
    return gone
