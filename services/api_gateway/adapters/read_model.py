"""Listing read model: a projection of the event store into SQL tables.

Rows and the projection cursor are written in one transaction, so the
projection is exactly-once and can be rebuilt from position 0 at any time.
"""
from __future__ import annotations

import asyncio
import json
import logging
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from sqlalchemy import (Column, MetaData, String, Table, Text, and_, delete, func, or_,
                        select)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from common.sqldb import (advance, cursor_table, decode_cursor, encode_cursor, read_position,
                          sql_database)
from common.tracing import instrument_engine

from ..application.ledger import SandboxLedger
from ..domain.sandbox import Sandbox
from ..domain.snapshot import Snapshot, snapshot_view
from ..domain.view import sandbox_view

log = logging.getLogger("corral.gateway.read_model")
meta = MetaData()
# Bump the version when the table changes: a new table is rebuilt from the events.
PROJECTION = "sandbox_view_v4"
views = Table(
    PROJECTION, meta,
    Column("id", String(64), primary_key=True),
    Column("org_id", String(64), index=True, nullable=False),
    Column("name", String(63), index=True),
    Column("state", String(16), index=True, nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("expires_at", String(40), index=True),
    Column("doc", Text, nullable=False),
)
snapshots = Table(
    "snapshot_view_v2", meta,
    Column("id", String(64), primary_key=True),
    Column("org_id", String(64), index=True, nullable=False),
    Column("state", String(16), index=True, nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("expires_at", String(40), index=True),
    Column("doc", Text, nullable=False),
)
cursors = cursor_table(meta, "projection_cursor")
LIVE = ("requested", "scheduled", "starting", "running", "paused")


class ReadModel:
    def __init__(self, store: str, sqlite_path: str):
        """Beside the event store `store` (a SQLite file at `sqlite_path`)."""
        db = sql_database(store, sqlite_path, "async")
        self.engine: AsyncEngine = create_async_engine(
            db.url, execution_options=db.execution_options())
        instrument_engine(self.engine)
        self._wake = asyncio.Event()
        self._passing = asyncio.Lock()  # one catch-up at a time in this process

    async def create(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(meta.create_all)

    async def position(self) -> int:
        async with self.engine.connect() as conn:
            return await conn.run_sync(read_position, cursors, PROJECTION)

    def wake(self) -> None:
        self._wake.set()

    async def run(self, ledger: SandboxLedger, stop: asyncio.Event, poll_s: float = 0.25) -> None:
        while not stop.is_set():
            self._wake.clear()  # before the pass: a save during it wakes the next one
            try:
                moved = await self.catch_up(ledger)
            except Exception:
                log.exception("projection pass failed; retrying")
                moved = 0
                await asyncio.sleep(1)
            if not moved:
                try:
                    await asyncio.wait_for(self._wake.wait(), poll_s)
                except TimeoutError:
                    pass

    async def catch_up(self, ledger: SandboxLedger, batch: int = 200) -> int:
        async with self._passing:
            return await self._catch_up(ledger, batch)

    async def _catch_up(self, ledger: SandboxLedger, batch: int) -> int:
        pos = await self.position()
        notes = await asyncio.to_thread(ledger.recorder.select_notifications, pos, batch, None, (),
                                        inclusive_of_start=False)
        if not notes:
            return 0
        ids = {n.originator_id for n in notes if ":Sandbox." in n.topic or ":Snapshot." in n.topic}
        docs, snaps = await asyncio.to_thread(self._load, ledger, ids)
        async with self.engine.begin() as conn:
            for doc in snaps:
                await conn.execute(delete(snapshots).where(snapshots.c.id == doc["id"]))
                await conn.execute(snapshots.insert().values(
                    id=doc["id"], org_id=doc["org_id"], state=doc["state"],
                    created_at=doc["created_at"], expires_at=doc["expires_at"],
                    doc=json.dumps(doc)))
            for doc in docs:
                await conn.execute(delete(views).where(views.c.id == doc["id"]))
                await conn.execute(views.insert().values(
                    id=doc["id"], org_id=doc["org_id"], name=doc["name"], state=doc["state"],
                    created_at=doc["created_at"], expires_at=doc["expires_at"],
                    doc=json.dumps(doc)))
            await conn.run_sync(advance, cursors, PROJECTION, pos, notes[-1].id)
        return len(notes)

    @staticmethod
    def _load(ledger: SandboxLedger, ids: set) -> tuple[list[dict], list[dict]]:
        boxes, snaps = [], []
        for oid in ids:
            try:
                agg: object = ledger.repository.get(UUID(str(oid)))
            except AggregateNotFoundError:
                continue
            if isinstance(agg, Sandbox):
                boxes.append(sandbox_view(agg))
            elif isinstance(agg, Snapshot):
                snaps.append(snapshot_view(agg))
        return boxes, snaps

    async def rebuild(self, ledger: SandboxLedger) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(views))
            await conn.execute(delete(snapshots))
            await conn.execute(delete(cursors).where(cursors.c.name == PROJECTION))
        while await self.catch_up(ledger):
            pass

    async def list_sandboxes(self, org_id: str, limit: int, cursor: str | None,
                             state: str | None, name: str | None) -> tuple[list[dict], str | None]:
        filters = [views.c.state == state] if state else []
        if name:
            filters.append(views.c.name == name)
        return await self._page(views, org_id, limit, cursor, filters)

    async def list_snapshots(self, org_id: str, limit: int, cursor: str | None
                             ) -> tuple[list[dict], str | None]:
        return await self._page(snapshots, org_id, limit, cursor, [])

    async def _page(self, table: Table, org_id: str, limit: int, cursor: str | None,
                    filters: list) -> tuple[list[dict], str | None]:
        """One org's rows by (created_at, id), keyset-paginated by an opaque cursor."""
        c = table.c
        q = select(c.doc, c.created_at, c.id).where(c.org_id == org_id, *filters)
        if cursor:
            after_ts, after_id = decode_cursor(cursor, (str, str))
            q = q.where(or_(c.created_at > after_ts,
                            and_(c.created_at == after_ts, c.id > after_id)))
        q = q.order_by(c.created_at, c.id).limit(limit + 1)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        items = [json.loads(r.doc) for r in rows[:limit]]
        last = rows[limit - 1] if len(rows) > limit else None
        return items, encode_cursor(last.created_at, last.id) if last else None

    async def due(self, before: str, limit: int = 200) -> list[str]:
        """Live sandboxes whose lease ends before `before` (ISO UTC), soonest first."""
        q = (select(views.c.id).where(views.c.state.in_(LIVE), views.c.expires_at <= before)
             .order_by(views.c.expires_at).limit(limit))
        async with self.engine.connect() as conn:
            return [r.id for r in (await conn.execute(q)).all()]

    async def due_snapshots(self, before: str, limit: int = 200) -> list[str]:
        """Ready snapshots whose lifetime ends before `before` (ISO UTC)."""
        q = (select(snapshots.c.id).where(snapshots.c.state == "ready",
                                          snapshots.c.expires_at <= before)
             .order_by(snapshots.c.expires_at).limit(limit))
        async with self.engine.connect() as conn:
            return [r.id for r in (await conn.execute(q)).all()]

    async def count_by_state(self) -> dict[str, int]:
        """How many sandboxes are in each state (every org)."""
        q = select(views.c.state, func.count()).group_by(views.c.state)
        async with self.engine.connect() as conn:
            return {r[0]: int(r[1]) for r in (await conn.execute(q)).all()}

    async def close(self) -> None:
        await self.engine.dispose()
