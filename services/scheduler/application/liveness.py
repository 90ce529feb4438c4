"""Which hosts are heartbeating, judged only over time the judge could hear.

A host is lost after `missed_beats` of its own heartbeat intervals of
silence, counted from the later of its last heartbeat and the moment the bus
last began flowing for this judge: start-up, a reconnect, a heartbeat
consumer that caught up after a stall. So after any time the judge was deaf
every host gets a fresh grace period, and no verdict at all is given while
the bus is not flowing (the probe in the heartbeat watcher decides that) or
while the probe's last verdict is older than `max_probe_age_s` (a probe that
hangs, as requests do while the client reconnects, is no verdict).
"""
from __future__ import annotations

import time
from collections.abc import Callable


class Liveness:
    def __init__(self, missed_beats: float = 3.0, clock: Callable[[], float] = time.monotonic,
                 max_probe_age_s: float = 3.0):
        self.missed_beats = missed_beats
        self.clock = clock
        self.max_probe_age_s = max_probe_age_s
        self._probed_at = float("-inf")
        # host -> (last seen, interval, heard): `heard` False for a host only
        # expected (registered, not heard since this judge started)
        self._seen: dict[str, tuple[float, float, bool]] = {}
        self._flowing_since: float | None = None

    def beat(self, host_id: str, interval_s: float) -> None:
        self._seen[host_id] = (self.clock(), interval_s, True)

    def expect(self, host_id: str, interval_s: float) -> None:
        """A host recorded ready but not heard yet (this judge just started):
        judged like one whose last heartbeat was now."""
        if host_id not in self._seen:
            self._seen[host_id] = (self.clock(), interval_s, False)

    def flowing(self, ok: bool) -> bool:
        """The probe's verdict on the bus; True when a fresh flow starts here
        (every host's grace period starts again)."""
        self._probed_at = self.clock()
        if not ok:
            self._flowing_since = None
            return False
        if self._flowing_since is None:
            self._flowing_since = self.clock()
            return True
        return False

    @property
    def is_flowing(self) -> bool:
        return (self._flowing_since is not None
                and self.clock() - self._probed_at <= self.max_probe_age_s)

    def age(self, host_id: str) -> float | None:
        """Seconds since the host's last heartbeat seen here, or None."""
        seen = self._seen.get(host_id)
        if seen is None or not seen[2]:
            return None
        return max(0.0, self.clock() - seen[0])

    def timeout_for(self, host_id: str) -> float:
        return self._seen[host_id][1] * self.missed_beats

    def alive(self) -> list[str]:
        """Heard within their timeout: candidates for placement."""
        now = self.clock()
        return [h for h, (t, i, heard) in self._seen.items()
                if heard and now - t <= i * self.missed_beats]

    def expired(self) -> list[str]:
        """Silent for their timeout while the bus flowed; none while it does not."""
        if self._flowing_since is None or not self.is_flowing:
            return []
        now, since = self.clock(), self._flowing_since
        return [h for h, (t, i, _) in self._seen.items()
                if now - max(t, since) > i * self.missed_beats]

    def forget(self, host_id: str) -> None:
        self._seen.pop(host_id, None)
