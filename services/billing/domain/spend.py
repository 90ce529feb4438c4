"""An org's monthly vCPU-seconds cap (no I/O): levels, and the crossings
recorded once per month and level (the event that carries each is published
through the store's outbox)."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from eventsourcing.domain import Aggregate, event

from .meter import NAMESPACE

WARN_PERCENT = 80
Level = Literal["none", "ok", "warn", "over"]


def spend_id(org_id: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"spend-cap/{org_id}")


def crossing_id(org_id: str, month: str, percent: int) -> str:
    return str(uuid.uuid5(NAMESPACE, f"spend/{org_id}/{month}/{percent}"))


def month_of(now: datetime) -> tuple[str, datetime]:
    """("YYYY-MM", the month's first instant), UTC."""
    now = now.astimezone(UTC)
    return f"{now.year:04d}-{now.month:02d}", datetime(now.year, now.month, 1, tzinfo=UTC)


def level(used: float, cap: float | None) -> tuple[Level, float | None]:
    if cap is None:
        return "none", None
    percent = round(100 * used / cap, 2)
    if percent >= 100:
        return "over", percent
    return ("warn" if percent >= WARN_PERCENT else "ok"), percent


def crossed_levels(lvl: Level) -> tuple[int, ...]:
    return {"warn": (WARN_PERCENT,), "over": (WARN_PERCENT, 100)}.get(lvl, ())


class SpendCap(Aggregate):
    @staticmethod
    def create_id(org_id: str, vcpu_seconds: float | None) -> uuid.UUID:
        return spend_id(org_id)

    @event("Set")
    def __init__(self, org_id: str, vcpu_seconds: float | None):
        self.org_id = org_id
        self.vcpu_seconds = vcpu_seconds
        self.crossed: list[str] = []  # "YYYY-MM:percent", the recent ones

    def change(self, vcpu_seconds: float | None) -> bool:
        if vcpu_seconds == self.vcpu_seconds:
            return False
        self._changed(vcpu_seconds=vcpu_seconds)
        return True

    @event("Changed")
    def _changed(self, vcpu_seconds: float | None) -> None:
        self.vcpu_seconds = vcpu_seconds

    def cross(self, month: str, percent: int, envelope: dict[str, Any]) -> bool:
        """Record a crossing once; False if this month's `percent` was recorded."""
        if f"{month}:{percent}" in self.crossed:
            return False
        self._crossed(key=f"{month}:{percent}", envelope=envelope)
        return True

    @event("Crossed")
    def _crossed(self, key: str, envelope: dict[str, Any]) -> None:
        # `envelope` makes the outbox relay publish this event
        self.crossed = (self.crossed + [key])[-24:]
