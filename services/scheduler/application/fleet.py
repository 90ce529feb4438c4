"""Fleet administration over the scheduler's store (sync: call via to_thread).

Hosts are found by following the notification log for `Host.Registered`
(filtered by topic in the store, advanced incrementally), so every instance
lists every host any instance ever recorded, including lost ones that no
longer heartbeat. Cordon / drain / uncordon are events on the `Host`
aggregate: they survive restarts and apply in every scheduler instance, since
placement loads hosts from the store.
"""
from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

from eventsourcing.utils import get_topic

from ..domain.host import Host
from .scheduler import Scheduler

REGISTERED_TOPIC = get_topic(Host.Registered)  # type: ignore[attr-defined]  # made by @event
DRAIN_NOTE = ("draining: no new placements; the sandboxes listed stay until they are stopped, "
              "destroyed or expire (no live migration or evacuation)")
CORDON_NOTE = "cordoned: no new placements; running sandboxes are not touched"


class UnknownHost(LookupError):
    pass


class Fleet:
    def __init__(self, app: Scheduler, batch: int = 500):
        self.app = app
        self.batch = batch
        self._known: dict[uuid.UUID, None] = {}  # ordered: registration order
        self._position = 0
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Fold newly registered hosts in (cheap when nothing is new)."""
        with self._lock:
            while True:
                notes = self.app.recorder.select_notifications(
                    self._position, self.batch, None, (REGISTERED_TOPIC,),
                    inclusive_of_start=False)
                if not notes:
                    return
                for n in notes:
                    oid = n.originator_id
                    self._known[oid if isinstance(oid, uuid.UUID) else uuid.UUID(str(oid))] = None
                self._position = notes[-1].id

    def hosts(self) -> list[Host]:
        self.refresh()
        found = [self.app._get(uid) for uid in list(self._known)]
        return sorted((h for h in found if isinstance(h, Host)), key=lambda h: h.host_id)

    def host(self, host_id: str) -> Host:
        h = self.app.host(host_id)
        if h is None:
            raise UnknownHost(host_id)
        return h

    def cordon(self, host_id: str) -> tuple[Host, bool]:
        return self._change(host_id, Host.cordon)

    def drain(self, host_id: str) -> tuple[Host, bool]:
        return self._change(host_id, Host.drain)

    def uncordon(self, host_id: str) -> tuple[Host, bool]:
        return self._change(host_id, Host.uncordon)

    def _change(self, host_id: str, action: Callable[[Host], bool]) -> tuple[Host, bool]:
        def attempt() -> tuple[Host, bool]:  # races: a placement, another instance
            h = self.host(host_id)
            if not action(h):
                return h, False
            self.app._save(h)
            return h, True
        return self.app.retry_on_conflict(attempt)
