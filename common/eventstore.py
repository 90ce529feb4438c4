"""Event store wiring: eventsourcing on SQLite (default) or PostgreSQL."""
from __future__ import annotations

import asyncio
import contextlib
import random
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, Repository
from eventsourcing.persistence import IntegrityError, TrackingRecorder

_SAFE = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")
T = TypeVar("T")
CONFLICT_RETRIES = 30
# Aggregates stay in memory between use cases; each get still reads the events
# stored since (fast-forward), so a write by another instance is never missed.
CACHE = {"AGGREGATE_CACHE_MAXSIZE": "4096", "AGGREGATE_CACHE_FASTFORWARD": "y"}


class StoreConflict(RuntimeError):
    """An aggregate kept changing under a use case; the whole call may be retried."""


def jittered_backoff(attempt: int) -> None:
    """Lost an optimistic-concurrency race: spread the retries out a little."""
    time.sleep(random.uniform(0, 0.002 * (attempt + 1)))


def store_env(store: str, state_dir: Path, db_name: str) -> dict[str, str]:
    """Environment for an eventsourcing Application.

    `store` is "sqlite" (a file `<state_dir>/<db_name>.sqlite`) or a
    `postgresql://user:pass@host:port/db?schema=x` URL.
    """
    if store == "sqlite":
        state_dir.mkdir(parents=True, exist_ok=True)
        return {
            **CACHE,
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str((state_dir / f"{db_name}.sqlite").resolve()),
            "SQLITE_LOCK_TIMEOUT": "10",
        }
    url = urlparse(store)
    if url.scheme not in ("postgresql", "postgres"):
        raise ValueError("CORRAL_STORE must be 'sqlite' or a postgresql:// URL")
    params = dict(p.split("=", 1) for p in url.query.split("&") if "=" in p)
    env = {
        **CACHE,
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": (url.path or "/postgres").lstrip("/") or "postgres",
        "POSTGRES_HOST": url.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(url.port or 5432),
        "POSTGRES_USER": unquote(url.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(url.password or ""),
        "POSTGRES_LOCK_TIMEOUT": "10",
        "POSTGRES_POOL_SIZE": "4",
        "POSTGRES_MAX_OVERFLOW": "4",
    }
    schema = params.get("schema")
    if schema:
        if not _SAFE.match(schema):
            raise ValueError("invalid schema name")
        _ensure_schema(env, schema)
        env["POSTGRES_SCHEMA"] = schema
    return env


def _connect(env: dict[str, str]) -> Any:
    import psycopg

    return psycopg.connect(host=env["POSTGRES_HOST"], port=int(env["POSTGRES_PORT"]),
                           user=env["POSTGRES_USER"], password=env["POSTGRES_PASSWORD"] or None,
                           dbname=env["POSTGRES_DBNAME"], autocommit=True, connect_timeout=10)


def _ensure_schema(env: dict[str, str], schema: str) -> None:
    with _connect(env) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')


@contextlib.contextmanager
def ddl_lock(env: dict[str, str] | None) -> Iterator[None]:
    """Services creating their tables in one PostgreSQL schema take turns: the
    library's CREATE TYPE and CREATE TABLE race each other when every service
    starts at once on a new schema (unique violations, "tuple concurrently
    updated"). A session advisory lock per schema; nothing for SQLite."""
    if not env or env.get("PERSISTENCE_MODULE") != "eventsourcing.postgres":
        yield
        return
    key = zlib.crc32(f"corral-ddl/{env.get('POSTGRES_SCHEMA', 'public')}".encode())
    with _connect(env) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def tracking(app: Application) -> TrackingRecorder:
    """A tracking recorder in the same database as `app`, for cursors."""
    with ddl_lock(dict(app.env)):  # (it creates its table)
        recorder: TrackingRecorder = app.factory.tracking_recorder()
    return recorder


class CachedRepository(Repository):
    """The library's cached repository with each get made atomic per aggregate.

    eventsourcing 9.5 fast-forwards the cached aggregate in place under a lock,
    then deep-copies it for the caller outside that lock: a concurrent get can
    copy an aggregate half-way through an update (seen as "dictionary changed
    size during iteration" in the scheduler; a torn copy would be silent)."""

    STRIPES = 64
    _stripes: list[threading.Lock]

    @classmethod
    def adopting(cls, plain: Repository) -> CachedRepository:
        """`plain`, configured by the library from the environment, made atomic."""
        repo = cls.__new__(cls)
        repo.__dict__.update(plain.__dict__)
        repo._stripes = [threading.Lock() for _ in range(cls.STRIPES)]
        return repo

    def get(self, aggregate_id: Any, *, version: int | None = None,
            **kwargs: Any) -> Any:
        if self.cache is None or version is not None:
            return super().get(aggregate_id, version=version, **kwargs)
        with self._stripes[hash(aggregate_id) % self.STRIPES]:
            return super().get(aggregate_id, **kwargs)


class StoreApp(Application):
    """An eventsourcing Application whose saves wake the outbox relay."""

    def construct_repository(self) -> Repository:
        plain = super().construct_repository()
        return plain if plain.cache is None else CachedRepository.adopting(plain)

    conflict_backoff: Callable[[int], None] = staticmethod(jittered_backoff)

    def __init__(self, env: dict[str, str] | None = None):
        with ddl_lock(env):  # (it creates the tables)
            super().__init__(env=env)
        self.on_saved: Callable[[], None] = lambda: None

    def notify_on_save(self, loop: asyncio.AbstractEventLoop,
                       *wakes: Callable[[], None]) -> None:
        """Saves happen in worker threads: call each of `wakes` on the loop's thread."""
        def saved() -> None:
            for wake in wakes:
                loop.call_soon_threadsafe(wake)
        self.on_saved = saved

    def _save(self, *aggregates: Any) -> None:
        self.save(*aggregates)
        self.on_saved()

    def retry_on_conflict(self, attempt: Callable[[], T], fail: Exception | None = None) -> T:
        """Run `attempt` (load, decide, save) again while its save loses the store's
        version check to a concurrent writer, with a jittered backoff; raise `fail`
        (default StoreConflict) when the retries run out."""
        for n in range(CONFLICT_RETRIES):
            try:
                return attempt()
            except IntegrityError:
                self.conflict_backoff(n)
        raise fail or StoreConflict("an aggregate kept changing; retry")

    def _get(self, uid: UUID) -> Any:
        """The aggregate, or None."""
        try:
            return self.repository.get(uid)
        except AggregateNotFoundError:
            return None
