"""What a usage line owes Stripe (no I/O): one meter event per meter with a
non-zero value, its identifier, and how each answer is treated.

Units: vCPU-seconds, memory GiB-seconds and snapshot storage GiB-hours, sent
as decimal strings of at most 6 decimals (a line's value is rounded once, so
the sum sent per meter is the sum of the rounded lines, exactly).
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Literal

PLACES = Decimal("0.000001")
MAX_IDENTIFIER = 100  # Stripe's limit
Outcome = Literal["sent", "retry", "park", "halt"]


@dataclass(frozen=True)
class MeterSpec:
    """`field` of a usage line, scaled by `scale`, goes to the meter `event_name`."""
    key: str
    event_name: str
    display_name: str
    field: str
    scale: Decimal


def meter_specs(vcpu: str, memory: str, storage: str) -> tuple[MeterSpec, ...]:
    return (MeterSpec("vcpu", vcpu, "Corral vCPU-seconds", "vcpu_seconds", Decimal(1)),
            MeterSpec("memory", memory, "Corral memory GiB-seconds", "memory_mib_seconds",
                      Decimal(1) / 1024),
            MeterSpec("storage", storage, "Corral snapshot storage GiB-hours",
                      "storage_mib_seconds", Decimal(1) / (1024 * 3600)))


def identifier(event_id: str, event_name: str) -> str:
    """Deterministic and readable: the usage line's id, then the meter's name."""
    out = f"{event_id}:{event_name}"
    if len(out) > MAX_IDENTIFIER:
        raise ValueError(f"identifier over {MAX_IDENTIFIER} characters: {out}")
    return out


def value_text(amount: float, scale: Decimal) -> str:
    v = (Decimal(repr(float(amount))) * scale).quantize(PLACES, rounding=ROUND_HALF_EVEN)
    return format(v.normalize(), "f") if v else "0"


@dataclass(frozen=True)
class PushLine:
    identifier: str
    event_id: str
    org_id: str
    event_name: str
    value: str
    timestamp: int  # the usage period's end, epoch seconds


def lines_for(item: dict, specs: tuple[MeterSpec, ...]) -> list[PushLine]:
    """`item`: a usage row (event_id, org_id, end_us and the metered fields)."""
    out = []
    for s in specs:
        value = value_text(item.get(s.field) or 0.0, s.scale)
        if value != "0":
            out.append(PushLine(identifier(item["event_id"], s.event_name), item["event_id"],
                                item["org_id"], s.event_name, value,
                                int(item["end_us"] // 1_000_000)))
    return out


def classify(status: int | None, code: str | None) -> Outcome:
    """An answer to a meter event (status None: no answer: timeout, refused)."""
    if status is not None and 200 <= status < 300:
        return "sent"
    if code == "resource_already_exists":  # our identifier: sent before
        return "sent"
    if status in (401, 403):
        return "halt"  # our key is wrong: nothing will pass, keep every line pending
    if status is None or status in (409, 429) or status >= 500:
        return "retry"
    return "park"  # 400, 404 ...: will never pass as it is


def backoff_s(attempts: int, cap_s: float) -> float:
    """1, 2, 4 ... seconds after the 1st, 2nd, 3rd ... failure, at most `cap_s`."""
    return float(min(cap_s, 2 ** max(0, min(attempts - 1, 30))))
