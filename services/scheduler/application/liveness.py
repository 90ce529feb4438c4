"""Which hosts are heartbeating, by an injected monotonic clock."""
from __future__ import annotations

import time
from collections.abc import Callable


class Liveness:
    def __init__(self, missed_beats: float = 3.0, clock: Callable[[], float] = time.monotonic):
        self.missed_beats = missed_beats
        self.clock = clock
        self._seen: dict[str, tuple[float, float]] = {}  # host -> (last_seen, interval)

    def beat(self, host_id: str, interval_s: float) -> None:
        self._seen[host_id] = (self.clock(), interval_s)

    def age(self, host_id: str) -> float | None:
        """Seconds since the host's last heartbeat seen here, or None."""
        seen = self._seen.get(host_id)
        return None if seen is None else max(0.0, self.clock() - seen[0])

    def timeout_for(self, host_id: str) -> float:
        return self._seen[host_id][1] * self.missed_beats

    def alive(self) -> list[str]:
        now = self.clock()
        return [h for h, (t, i) in self._seen.items() if now - t <= i * self.missed_beats]

    def expired(self) -> list[str]:
        now = self.clock()
        return [h for h, (t, i) in self._seen.items() if now - t > i * self.missed_beats]

    def forget(self, host_id: str) -> None:
        self._seen.pop(host_id, None)
