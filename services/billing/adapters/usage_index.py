"""Usage line items by org and time: a SQL projection of the Meter `Cut` events.

Each `Cut` that billed something carries its UsageRecorded envelope; those are
copied into one table. Rows and the projection cursor are written in one
transaction with an optimistic check on the cursor, so the projection is
exactly-once even with two billing instances on one store, and can be rebuilt
from position 0 (bump PROJECTION). Sync SQLAlchemy: call via asyncio.to_thread.
"""
from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime, timedelta

from eventsourcing.persistence import ApplicationRecorder
from eventsourcing.utils import get_topic
from sqlalchemy import (BigInteger, Column, Float, Index, MetaData, String, Table, and_,
                        create_engine, func, or_, select)
from sqlalchemy.engine import Engine

from common.sqldb import (advance, cursor_table, decode_cursor, encode_cursor, read_position,
                          sql_database)
from common.tracing import instrument_engine

from ..domain.meter import Meter
from ..domain.stripe_lines import MeterSpec, lines_for
from .push_ledger import PushLedger, enqueue, pushes

log = logging.getLogger("corral.billing.usage")
CUT_TOPIC = get_topic(Meter.Cut)  # type: ignore[attr-defined]  # made by @event
PROJECTION = "usage_items_v2"
meta = MetaData()
items = Table(
    PROJECTION, meta,
    Column("event_id", String(64), primary_key=True),
    Column("org_id", String(64), nullable=False),
    Column("sandbox_id", String(64), nullable=False),
    Column("start_us", BigInteger, nullable=False),  # epoch microseconds: exact ordering
    Column("end_us", BigInteger, nullable=False),
    Column("vcpu_seconds", Float, nullable=False),
    Column("memory_mib_seconds", Float, nullable=False),
    Column("snapshot_id", String(64)),
    Column("storage_mib_seconds", Float, nullable=False, default=0.0),
    Index(f"ix_{PROJECTION}_org_start", "org_id", "start_us", "event_id"),
)
cursors = cursor_table(meta, "billing_projection_cursor")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(dt: datetime) -> int:
    d = dt - EPOCH
    return (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)




class UsageIndex:
    def __init__(self, store: str, sqlite_path: str, meters: tuple[MeterSpec, ...] = ()):
        """Beside the event store `store` (a SQLite file at `sqlite_path`). Each
        new line also gets its Stripe push rows, one per meter in `meters`."""
        db = sql_database(store, sqlite_path, "sync")
        self.engine: Engine = create_engine(
            db.url, execution_options=db.execution_options(),
            connect_args={"timeout": 10} if db.sqlite else {})
        instrument_engine(self.engine)
        self._lock = threading.Lock()  # one catch-up per process at a time
        self.meters = meters
        self.ledger = PushLedger(self.engine)
        self.touched: set[str] = set()  # orgs with new lines since last drained

    def create(self) -> None:
        meta.create_all(self.engine)
        self.ledger.create()
        self.backfill()

    def backfill(self, batch: int = 1000) -> int:
        """Push rows for lines projected before the ledger existed (an upgrade)."""
        made = 0
        with self._lock:
            while True:
                with self.engine.begin() as conn:
                    rows = conn.execute(select(items).where(
                        ~items.c.event_id.in_(select(pushes.c.event_id))).limit(batch)
                    ).mappings().all()
                    lines = [x for r in rows for x in lines_for(dict(r), self.meters)]
                    made += enqueue(conn, lines)
                if len(rows) < batch or not lines:
                    return made

    def position(self) -> int:
        with self.engine.connect() as conn:
            return read_position(conn, cursors, PROJECTION)

    def catch_up(self, recorder: ApplicationRecorder, batch: int = 500) -> int:
        """Project the next batch of Cut events; returns notifications consumed."""
        with self._lock:
            pos = self.position()
            notes = recorder.select_notifications(pos, batch, None, (CUT_TOPIC,),
                                                  inclusive_of_start=False)
            if not notes:
                return 0
            rows = [r for r in (_row(n.state) for n in notes) if r is not None]
            with self.engine.begin() as conn:
                if rows:
                    have = set(conn.execute(select(items.c.event_id).where(
                        items.c.event_id.in_([r["event_id"] for r in rows]))).scalars())
                    new = [r for r in rows if r["event_id"] not in have]
                    if new:
                        conn.execute(items.insert(), new)
                        enqueue(conn, [x for r in new for x in lines_for(r, self.meters)])
                advance(conn, cursors, PROJECTION, pos, notes[-1].id)
            self.touched |= {r["org_id"] for r in rows}
            return len(notes)

    def catch_up_all(self, recorder: ApplicationRecorder, max_batches: int = 50) -> None:
        for _ in range(max_batches):
            if not self.catch_up(recorder):
                return

    def drain_touched(self) -> list[str]:
        with self._lock:
            out, self.touched = sorted(self.touched), set()
        return out

    def vcpu_seconds_since(self, org_id: str, start: datetime) -> float:
        """The org's vCPU-seconds in lines whose period starts at `start` or later."""
        q = select(func.coalesce(func.sum(items.c.vcpu_seconds), 0.0)).where(
            items.c.org_id == org_id, items.c.start_us >= to_us(start))
        with self.engine.connect() as conn:
            return float(conn.execute(q).scalar_one())

    def page(self, org_id: str, start: datetime, end: datetime, limit: int,
             cursor: str | None) -> tuple[list[dict], str | None]:
        """Items overlapping [start, end), by (period_start, event_id)."""
        q = select(items).where(items.c.org_id == org_id, items.c.start_us < to_us(end),
                                items.c.end_us > to_us(start))
        if cursor:
            after_us, after_id = decode_cursor(cursor, (int, str))
            q = q.where(or_(items.c.start_us > after_us,
                            and_(items.c.start_us == after_us, items.c.event_id > after_id)))
        q = q.order_by(items.c.start_us, items.c.event_id).limit(limit + 1)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        pushed = self.ledger.for_events([r.event_id for r in rows[:limit]])
        out = [{"event_id": r.event_id, "sandbox_id": r.sandbox_id,
                "period_start": from_us(r.start_us), "period_end": from_us(r.end_us),
                "vcpu_seconds": r.vcpu_seconds, "memory_mib_seconds": r.memory_mib_seconds,
                "snapshot_id": r.snapshot_id, "storage_mib_seconds": r.storage_mib_seconds,
                "stripe": [{"meter": p["event_name"], "identifier": p["identifier"],
                            "value": p["value"], "state": p["state"], "reason": p["reason"],
                            "attempts": p["attempts"]} for p in pushed.get(r.event_id, [])]}
               for r in rows[:limit]]
        nxt = (encode_cursor(rows[limit - 1].start_us, rows[limit - 1].event_id)
               if len(rows) > limit else None)
        return out, nxt

    def close(self) -> None:
        self.engine.dispose()


def _row(state: bytes | str) -> dict | None:
    env = json.loads(state).get("envelope")
    if not env or env.get("type") != "UsageRecorded":
        return None  # a cut with nothing to bill
    start = datetime.fromisoformat(env["period_start"])
    end = datetime.fromisoformat(env["period_end"])
    return {"event_id": env["event_id"], "org_id": env["org_id"],
            "sandbox_id": env["sandbox_id"], "start_us": to_us(start), "end_us": to_us(end),
            "vcpu_seconds": float(env["vcpu_seconds"]),
            "memory_mib_seconds": float(env["memory_mib_seconds"]),
            "snapshot_id": env.get("snapshot_id"),
            "storage_mib_seconds": float(env.get("storage_mib_seconds") or 0)}
