"""Shared fixtures: a private nats-server and PostgreSQL for store tests.

Integration services are real. PostgreSQL is CORRAL_TEST_PG (default: the
local server), or from testcontainers where that does not answer.
In CI a missing service is a failure, never a skip.
"""
from __future__ import annotations

import os
import shutil
import uuid

import pytest

from common.natsserver import NatsServer

from .prereq import unavailable

PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_base_url():
    """CORRAL_TEST_PG, else the local server; where neither answers and a Docker
    engine runs, a testcontainers PostgreSQL (pulled: needs a registry)."""
    url = os.environ.get("CORRAL_TEST_PG", PG_DEFAULT)
    try:
        import psycopg
        with psycopg.connect(url.split("?")[0], connect_timeout=3):
            pass
    except Exception as e:  # noqa: BLE001
        if "CORRAL_TEST_PG" not in os.environ and shutil.which("docker") \
                and os.path.exists("/var/run/docker.sock"):
            from testcontainers.postgres import PostgresContainer
            with PostgresContainer("postgres:16-alpine", driver=None) as pg:
                yield pg.get_connection_url()
            return
        unavailable(f"PostgreSQL at {url} ({e.__class__.__name__})")
    yield url


@pytest.fixture
def pg_url(pg_base_url):
    """A fresh schema per test, dropped afterwards."""
    import psycopg
    schema = "t_" + uuid.uuid4().hex[:12]
    sep = "&" if "?" in pg_base_url else "?"
    yield f"{pg_base_url}{sep}schema={schema}"
    with psycopg.connect(pg_base_url.split("?")[0], autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    """Run a store test on both event stores."""
    if request.param == "sqlite":
        return "sqlite"
    return request.getfixturevalue("pg_url")
