"""Runtime kit pieces that need no services."""
import json
import logging

import pytest

from common.logging import JsonFormatter, log_context, redact
from common.service import warn_if_plaintext

pytestmark = pytest.mark.unit


def test_plaintext_warning_only_beyond_loopback(caplog):
    with caplog.at_level(logging.WARNING, logger="corral.service"):
        assert warn_if_plaintext("api", "127.0.0.1") is False
        assert warn_if_plaintext("api", "::1") is False
        assert warn_if_plaintext("api", "0.0.0.0") is True
        assert warn_if_plaintext("api", "10.0.0.5", tls=True) is False
    assert len(caplog.records) == 1 and "plaintext" in caplog.records[0].getMessage()


def test_json_lines_carry_context_and_redact_credentials():
    rec = logging.LogRecord("corral.x", logging.INFO, __file__, 1,
                            "connecting to postgresql://user:secret@db:5432/x", None, None)
    with log_context(op_id="op_1", sandbox_id="sb", host_id="h"):
        doc = json.loads(JsonFormatter().format(rec))
    assert doc["op_id"] == "op_1" and doc["sandbox_id"] == "sb" and doc["host_id"] == "h"
    assert "secret" not in doc["msg"] and "***@db" in doc["msg"]
    assert redact("nats://a:b@h:4222") == "nats://***@h:4222"
    # a port URL's token opens that port: never in a log line
    assert redact('"GET /ports/sb-1/8000/org.c2VjcmV0/a/b?x=1 HTTP/1.1"') == \
        '"GET /ports/sb-1/8000/***/a/b?x=1 HTTP/1.1"'
    assert redact("WebSocket /ports/sb-1/8765/org.c2Vj") == "WebSocket /ports/sb-1/8765/***"


async def test_run_until_stopped_survives_finished_jobs_and_stops_on_crash():
    import asyncio

    from common.service import run_until_stopped
    stop, ran = asyncio.Event(), []

    async def one_off():
        ran.append("once")

    async def forever():
        await stop.wait()
        ran.append("forever-done")

    async def stopper():
        await asyncio.sleep(0.05)
        stop.set()
    await asyncio.wait_for(run_until_stopped(stop, one_off(), forever(), stopper()), 5)
    assert ran == ["once", "forever-done"]

    async def boom():
        raise RuntimeError("x")
    stop2 = asyncio.Event()
    with pytest.raises(SystemExit):  # awaited directly: SystemExit escapes tasks
        await run_until_stopped(stop2, boom(), stop2.wait())
    assert stop2.is_set()


def test_retry_on_conflict_retries_backs_off_and_gives_up(tmp_path):
    from eventsourcing.persistence import IntegrityError

    from common.eventstore import CONFLICT_RETRIES, StoreApp, StoreConflict, store_env
    app = StoreApp(store_env("sqlite", tmp_path, "t"))
    waits: list[int] = []
    app.conflict_backoff = waits.append  # injected: no real sleeps
    calls = []

    def lose_twice() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise IntegrityError("version taken")
        return "saved"
    assert app.retry_on_conflict(lose_twice) == "saved" and waits == [0, 1]

    def always_lose() -> None:
        raise IntegrityError("version taken")
    waits.clear()
    with pytest.raises(KeyError):  # the caller's own error when retries run out
        app.retry_on_conflict(always_lose, KeyError("busy"))
    assert waits == list(range(CONFLICT_RETRIES))
    with pytest.raises(StoreConflict):
        app.retry_on_conflict(always_lose)
    with pytest.raises(ValueError):  # anything else is not a conflict: no retry
        app.retry_on_conflict(lambda: int("x"))
    app.close()


async def test_waiters_until_wakes_on_notify_and_honours_the_deadline():
    import asyncio
    import time

    from services.api_gateway.application.waiters import Waiters
    w, state = Waiters(), {"v": "starting", "loads": 0}

    async def load() -> str:
        state["loads"] += 1
        return state["v"]
    t0 = time.monotonic()
    task = asyncio.ensure_future(w.until("sb", load, lambda v: v == "running", t0 + 10))
    await asyncio.sleep(0.05)
    state["v"] = "running"
    w.notify("sb")
    assert await task == "running" and time.monotonic() - t0 < 0.4  # woken, not polled
    assert await w.until("sb", load, lambda v: False, time.monotonic() + 0.2) == "running"
    assert state["loads"] >= 3
