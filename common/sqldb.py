"""SQL databases beside the event store (projections, the auth store): where
they live, and the cursor a projection advances in the same transaction as
its rows, so it is exactly-once (even with two instances on one database) and
can be rebuilt from position 0."""
from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, urlparse

from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, and_, select

_DRIVERS = {"async": ("sqlite+aiosqlite", "postgresql+asyncpg"),
            "sync": ("sqlite", "postgresql+psycopg")}
_SAFE_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")


@dataclass(frozen=True)
class SqlDatabase:
    url: str
    schema: str | None  # PostgreSQL schema to use (created by the user of the database)

    @property
    def sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    def execution_options(self) -> dict[str, Any]:
        return {"schema_translate_map": {None: self.schema}} if self.schema else {}


def sql_database(store: str, sqlite_path: str, mode: Literal["async", "sync"]) -> SqlDatabase:
    """The database beside the event store `store`: a SQLite file at `sqlite_path`,
    or the store's PostgreSQL database (`?schema=` kept apart) with this mode's driver."""
    lite, pg = _DRIVERS[mode]
    if store == "sqlite":
        return SqlDatabase(f"{lite}:///{sqlite_path}", None)
    parsed = urlparse(store)
    if parsed.scheme not in ("postgresql", "postgres"):
        raise ValueError("CORRAL_STORE must be 'sqlite' or a postgresql:// URL")
    schemas = parse_qs(parsed.query).get("schema")
    schema = schemas[-1] if schemas else None
    if schema is not None and not _SAFE_SCHEMA.match(schema):
        raise ValueError("invalid schema name")
    return SqlDatabase(f"{pg}://{store.split('://', 1)[1].split('?')[0]}", schema)


def cursor_table(meta: MetaData, name: str) -> Table:
    return Table(name, meta, Column("name", String(64), primary_key=True),
                 Column("position", Integer, nullable=False))


def read_position(conn: Connection, cursors: Table, projection: str) -> int:
    row = conn.execute(select(cursors.c.position).where(cursors.c.name == projection)).first()
    return int(row[0]) if row else 0


def advance(conn: Connection, cursors: Table, projection: str, old: int, new: int) -> None:
    """Move the cursor from `old` to `new` in the caller's transaction; raise if
    another writer moved it first (the transaction then rolls back)."""
    moved = conn.execute(cursors.update().where(and_(
        cursors.c.name == projection, cursors.c.position == old)).values(position=new))
    if moved.rowcount == 0:
        if old != 0:
            raise RuntimeError(f"projection cursor {projection} moved underneath us")
        conn.execute(cursors.insert().values(name=projection, position=new))


def encode_cursor(*key: str | int) -> str:
    """An opaque keyset-pagination cursor: the sort key of the last row served."""
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, types: tuple[type, ...]) -> list[Any]:
    """The key of `encode_cursor`, each part of exactly its type; ValueError otherwise."""
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError):
        key = None
    if (not isinstance(key, list) or len(key) != len(types)
            or any(type(k) is not t for k, t in zip(key, types, strict=True))):
        raise ValueError("invalid cursor")
    return key
