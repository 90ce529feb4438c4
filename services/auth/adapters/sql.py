"""The auth database: SQLAlchemy async over aiosqlite (default) or asyncpg.

`SqlStore.tx()` is the unit of work: one transaction, one `AuthRepository`.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from common.sqldb import SqlDatabase, sql_database
from common.tracing import instrument_engine

from ..domain.errors import Conflict
from ..domain.model import ApiKey, HostToken, Org
from .tables import api_keys, host_tokens, metadata, orgs

log = logging.getLogger("corral.auth.sql")


class AuthRepository:
    """Row <-> record mapping inside one transaction."""

    def __init__(self, conn: AsyncConnection):
        self.conn = conn

    async def add_org(self, org: Org) -> None:
        """Raises Conflict on a taken name; the transaction is then unusable."""
        try:
            await self.conn.execute(orgs.insert().values(**org.__dict__))
        except IntegrityError:
            raise Conflict("an org with that name exists") from None

    async def get_org(self, org_id: str) -> Org | None:
        row = (await self.conn.execute(orgs.select().where(orgs.c.id == org_id))).first()
        return Org(**row._mapping) if row else None

    async def org_by_name(self, name: str) -> Org | None:
        row = (await self.conn.execute(orgs.select().where(orgs.c.name == name))).first()
        return Org(**row._mapping) if row else None

    async def add_api_key(self, key: ApiKey) -> None:
        await self.conn.execute(api_keys.insert().values(**key.__dict__))

    async def api_keys_with_prefix(self, prefix: str) -> list[ApiKey]:
        rows = await self.conn.execute(api_keys.select().where(api_keys.c.prefix == prefix))
        return [ApiKey(**r._mapping) for r in rows]

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        row = (await self.conn.execute(api_keys.select().where(api_keys.c.id == key_id))).first()
        return ApiKey(**row._mapping) if row else None

    async def active_api_keys_named(self, name: str, org_id: str | None) -> list[ApiKey]:
        q = api_keys.select().where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None),
                                    api_keys.c.org_id == org_id if org_id
                                    else api_keys.c.org_id.is_(None))
        return [ApiKey(**r._mapping) for r in await self.conn.execute(q)]

    async def revoke_api_key(self, key_id: str, at: str) -> None:
        await self.conn.execute(api_keys.update().where(
            api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)).values(revoked_at=at))

    async def add_host_token(self, tok: HostToken) -> None:
        await self.conn.execute(host_tokens.insert().values(**tok.__dict__))

    async def host_tokens_with_prefix(self, prefix: str) -> list[HostToken]:
        rows = await self.conn.execute(host_tokens.select().where(host_tokens.c.prefix == prefix))
        return [HostToken(**r._mapping) for r in rows]

    async def active_host_tokens_named(self, name: str) -> list[HostToken]:
        q = host_tokens.select().where(host_tokens.c.name == name,
                                       host_tokens.c.revoked_at.is_(None))
        return [HostToken(**r._mapping) for r in await self.conn.execute(q)]

    async def active_host_tokens_of(self, host_id: str) -> list[HostToken]:
        q = host_tokens.select().where(host_tokens.c.host_id == host_id,
                                       host_tokens.c.revoked_at.is_(None))
        return [HostToken(**r._mapping) for r in await self.conn.execute(q)]

    async def revoke_host_token(self, token_id: str, at: str) -> None:
        await self.conn.execute(host_tokens.update().where(
            host_tokens.c.id == token_id, host_tokens.c.revoked_at.is_(None))
            .values(revoked_at=at))

    async def mark_registered(self, token_id: str, hostname: str, at: str) -> None:
        await self.conn.execute(host_tokens.update().where(host_tokens.c.id == token_id)
                                .values(hostname=hostname, registered_at=at))


class SqlStore:
    def __init__(self, db: SqlDatabase):
        self.schema = db.schema
        self.engine: AsyncEngine = create_async_engine(
            db.url, execution_options=db.execution_options(), pool_pre_ping=not db.sqlite,
            hide_parameters=True, connect_args={"timeout": 15} if db.sqlite else {})
        instrument_engine(self.engine)
        if db.sqlite:
            sa.event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    @classmethod
    def from_settings(cls, store: str, state_dir: Path) -> SqlStore:
        if store == "sqlite":
            state_dir.mkdir(parents=True, exist_ok=True)
        return cls(sql_database(store, str((state_dir / "auth.sqlite").resolve()), "async"))

    async def create_schema(self, attempts: int = 5) -> None:
        """Idempotent; retried because concurrent instances may race on DDL."""
        for i in range(attempts):
            try:
                async with self.engine.begin() as conn:
                    if self.schema:
                        await conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
                    await conn.run_sync(metadata.create_all)
                return
            except DBAPIError:
                if i == attempts - 1:
                    raise
                log.info("schema creation raced with another instance; retrying")
                await asyncio.sleep(0.2 * (i + 1))

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[AuthRepository]:
        async with self.engine.begin() as conn:
            yield AuthRepository(conn)

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - readiness only
            return False

    async def close(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: Any, _record: object) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
