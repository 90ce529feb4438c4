"""Facts folded into an aggregate once each, by event_id (redelivery is a no-op)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any


class FactLog:
    """Needs `seen: list[str]`, an `@event("Fact") _fact(envelope)` for facts
    this service originates (the stored `envelope` is its outbox: the relay
    publishes it) and an `@event("Folded") _folded(fact)` for another
    service's facts (stored as `fact`: never published again); both fold the
    same way and append to `seen`."""

    seen: list[str]
    _fact: Callable[[dict[str, Any]], None]
    _folded: Callable[[dict[str, Any]], None]

    def has_seen(self, event_id: str) -> bool:
        return event_id in self.seen

    def record_fact(self, envelope: dict[str, Any], own: bool = True) -> bool:
        """Fold one fact in; False if it was already folded in. `own`: this
        service's own (published from the store), else another's, folded in."""
        if envelope["event_id"] in self.seen:
            return False
        (self._fact if own else self._folded)(envelope)
        return True
