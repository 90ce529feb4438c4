"""The one text form of a point in time, and its parser."""
from __future__ import annotations

from datetime import UTC, datetime


def utc_text(dt: datetime) -> str:
    """UTC with microseconds and "Z": fixed width, so stored times compare
    correctly as strings (in SQL too)."""
    if dt.tzinfo is None:
        raise ValueError("a time without a timezone")
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
