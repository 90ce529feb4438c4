"""Placement policy: pure function over candidate hosts."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class HostSummary:
    """What placement needs of a host, as last read: cheap to keep for every
    host, possibly stale (a placement always checks the host itself)."""
    host_id: str
    capacity: dict[str, int]
    used_vcpus: int
    used_memory_mib: int
    count: int
    open: bool  # ready and open for scheduling

    def fits(self, vcpus: int, memory_mib: int) -> bool:
        c = self.capacity
        return (self.open and self.count < c["max_sandboxes"]
                and self.used_vcpus + vcpus <= c["vcpus"]
                and self.used_memory_mib + memory_mib <= c["memory_mib"])
