"""Facts folded into an aggregate once each, by event_id (redelivery is a no-op)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any


class FactLog:
    """Needs `seen: list[str]` and an `@event("Fact") _fact(envelope)` that appends to it."""

    seen: list[str]
    _fact: Callable[[dict[str, Any]], None]

    def has_seen(self, event_id: str) -> bool:
        return event_id in self.seen

    def record_fact(self, envelope: dict[str, Any]) -> bool:
        """Fold one fact in; False if it was already folded in."""
        if envelope["event_id"] in self.seen:
            return False
        self._fact(envelope)
        return True
