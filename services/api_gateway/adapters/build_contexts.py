"""Build contexts between their upload and the end of their build: blobs in
the gateway's database (any gateway instance serves a host's read)."""
from __future__ import annotations

import time

from sqlalchemy import Column, Float, Integer, LargeBinary, MetaData, String, Table, delete, func
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

meta = MetaData()
contexts = Table(
    "build_context_v1", meta,
    Column("image_id", String(64), primary_key=True),
    Column("org_id", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("data", LargeBinary, nullable=False),
)


class BuildContexts:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(meta.create_all)

    async def put(self, image_id: str, org_id: str, data: bytes) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(contexts.insert().values(
                image_id=image_id, org_id=org_id, size=len(data), created_at=time.time(),
                data=data))

    async def read(self, image_id: str, org_id: str, offset: int, n: int
                   ) -> tuple[bytes, int] | None:
        """(up to `n` bytes from `offset`, total size), None if there is none."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                select(func.substr(contexts.c.data, offset + 1, n), contexts.c.size)
                .where(contexts.c.image_id == image_id, contexts.c.org_id == org_id))).first()
        if row is None:
            return None
        return bytes(row[0] or b""), int(row[1])

    async def delete(self, image_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(contexts).where(contexts.c.image_id == image_id))
