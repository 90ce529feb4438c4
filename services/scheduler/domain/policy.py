"""Placement policy: pure function over candidate hosts."""
from __future__ import annotations

from typing import Iterable, Protocol


class Candidate(Protocol):
    host_id: str
    capacity: dict[str, int]
    used_vcpus: int
    used_memory_mib: int

    def fits(self, vcpus: int, memory_mib: int) -> bool: ...


def choose_host(hosts: Iterable[Candidate], vcpus: int, memory_mib: int) -> Candidate | None:
    """Least-loaded host (by memory share, then vCPU share) that fits the request."""
    fitting = [h for h in hosts if h.fits(vcpus, memory_mib)]
    if not fitting:
        return None
    return min(fitting, key=lambda h: (
        (h.used_memory_mib + memory_mib) / h.capacity["memory_mib"],
        (h.used_vcpus + vcpus) / h.capacity["vcpus"], h.host_id))
