"""Placement policy: pure function over candidate hosts."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar


class Candidate(Protocol):
    @property
    def host_id(self) -> str: ...
    @property
    def capacity(self) -> dict[str, int]: ...
    @property
    def used_vcpus(self) -> int: ...
    @property
    def used_memory_mib(self) -> int: ...
    def fits(self, vcpus: int, memory_mib: int) -> bool: ...


C = TypeVar("C", bound=Candidate)


def choose_host(hosts: Iterable[C], vcpus: int, memory_mib: int) -> C | None:
    """Least-loaded host (by memory share, then vCPU share) that fits the request."""
    fitting = [h for h in hosts if h.fits(vcpus, memory_mib)]
    if not fitting:
        return None
    return min(fitting, key=lambda h: (
        (h.used_memory_mib + memory_mib) / h.capacity["memory_mib"],
        (h.used_vcpus + vcpus) / h.capacity["vcpus"], h.host_id))
