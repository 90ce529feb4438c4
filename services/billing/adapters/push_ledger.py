"""The Stripe push ledger: one row per (usage line, meter), written in the same
transaction as the usage line itself (usage_index), then moved by the pusher
from `pending` to `sent`, or to `parked` with the reason Stripe gave.

A row is claimed (a lease, `claimed_until`) before it is sent, so two billing
instances never send one line at once; a claim that dies with its process
expires and the row is sent again, with the same identifier (Stripe drops the
copy: `resource_already_exists` counts as sent). Sync SQLAlchemy: call via
asyncio.to_thread.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from decimal import Decimal

from sqlalchemy import (BigInteger, Column, Index, Integer, MetaData, String, Table, and_, func,
                        select, update)
from sqlalchemy.engine import Connection, Engine

from ..domain.stripe_lines import PushLine

meta = MetaData()
pushes = Table(
    "stripe_push_v1", meta,
    Column("identifier", String(100), primary_key=True),
    Column("event_id", String(64), nullable=False),
    Column("org_id", String(64), nullable=False),
    Column("event_name", String(100), nullable=False),
    Column("value", String(40), nullable=False),
    Column("value_micros", BigInteger, nullable=False),  # the value x 10^6: exact SQL sums
    Column("timestamp", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),  # pending | sent | parked
    Column("reason", String(500)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_us", BigInteger, nullable=False, default=0),
    Column("claimed_until_us", BigInteger, nullable=False, default=0),
    Column("sent_us", BigInteger),
    Index("ix_stripe_push_v1_due", "state", "next_us"),
    Index("ix_stripe_push_v1_event", "event_id"),
)
LEASE_S = 60
MICROS = 1_000_000


def now_us() -> int:
    return time.time_ns() // 1000


def enqueue(conn: Connection, lines: Iterable[PushLine]) -> int:
    """Pending rows for `lines` not already in the ledger (inside the caller's transaction)."""
    lines = list(lines)
    if not lines:
        return 0
    have = set(conn.execute(select(pushes.c.identifier).where(
        pushes.c.identifier.in_([x.identifier for x in lines]))).scalars())
    new = [{"identifier": x.identifier, "event_id": x.event_id, "org_id": x.org_id,
            "event_name": x.event_name, "value": x.value, "timestamp": x.timestamp,
            "value_micros": int(Decimal(x.value) * MICROS),
            "state": "pending", "attempts": 0, "next_us": 0, "claimed_until_us": 0}
           for x in lines if x.identifier not in have]
    if new:
        conn.execute(pushes.insert(), new)
    return len(new)


class PushLedger:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self) -> None:
        meta.create_all(self.engine)

    def claim(self, limit: int, lease_s: float = LEASE_S) -> list[dict]:
        """Up to `limit` due pending rows, each claimed by this caller alone."""
        t = now_us()
        with self.engine.begin() as conn:
            due = conn.execute(select(pushes).where(
                pushes.c.state == "pending", pushes.c.next_us <= t,
                pushes.c.claimed_until_us <= t).order_by(pushes.c.next_us, pushes.c.timestamp)
                .limit(limit)).mappings().all()
        out = []
        for row in due:
            with self.engine.begin() as conn:
                won = conn.execute(update(pushes).where(
                    pushes.c.identifier == row["identifier"], pushes.c.state == "pending",
                    pushes.c.claimed_until_us == row["claimed_until_us"]).values(
                    claimed_until_us=t + int(lease_s * 1e6))).rowcount
            if won:
                out.append(dict(row))
        return out

    def _set(self, identifier: str, **values: object) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(pushes).where(pushes.c.identifier == identifier)
                         .values(claimed_until_us=0, **values))

    def sent(self, identifier: str) -> None:
        self._set(identifier, state="sent", reason=None, sent_us=now_us(),
                  attempts=pushes.c.attempts + 1)

    def retry_later(self, identifier: str, reason: str, delay_s: float) -> None:
        self._set(identifier, reason=reason[:500], attempts=pushes.c.attempts + 1,
                  next_us=now_us() + int(delay_s * 1e6))

    def release(self, identifier: str, delay_s: float) -> None:
        """Back to pending without counting an attempt (nothing was sent)."""
        self._set(identifier, next_us=now_us() + int(delay_s * 1e6))

    def park(self, identifier: str, reason: str) -> None:
        self._set(identifier, state="parked", reason=reason[:500],
                  attempts=pushes.c.attempts + 1)

    def parked(self, limit: int, org_id: str | None = None) -> list[dict]:
        q = select(pushes).where(pushes.c.state == "parked")
        if org_id:
            q = q.where(pushes.c.org_id == org_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                q.order_by(pushes.c.timestamp, pushes.c.identifier).limit(limit)).mappings()]

    def retry_parked(self, identifiers: list[str] | None, org_id: str | None = None) -> int:
        """Parked rows (all, or these) back to pending, due now."""
        cond = [pushes.c.state == "parked"]
        if identifiers is not None:
            cond.append(pushes.c.identifier.in_(identifiers))
        if org_id:
            cond.append(pushes.c.org_id == org_id)
        with self.engine.begin() as conn:
            return conn.execute(update(pushes).where(and_(*cond)).values(
                state="pending", next_us=0, claimed_until_us=0)).rowcount

    def for_events(self, event_ids: list[str]) -> dict[str, list[dict]]:
        if not event_ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(select(pushes).where(pushes.c.event_id.in_(event_ids))
                                .order_by(pushes.c.identifier)).mappings().all()
        out: dict[str, list[dict]] = {}
        for r in rows:
            out.setdefault(r["event_id"], []).append(dict(r))
        return out

    def totals(self) -> list[dict]:
        """Per meter and state: lines and the exact sum of their values (as text)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(pushes.c.event_name, pushes.c.state, func.count(),
                                       func.sum(pushes.c.value_micros)).group_by(
                pushes.c.event_name, pushes.c.state).order_by(
                pushes.c.event_name, pushes.c.state)).all()
        return [{"event_name": name, "state": state, "lines": n,
                 "value": format(Decimal(int(total or 0)) / MICROS, "f")}
                for name, state, n, total in rows]
