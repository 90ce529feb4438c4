"""When spans are exported, trace ids in log lines, and SSE keepalives while
a command is silent."""
import asyncio
import json
import logging

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from common.logging import JsonFormatter
from common.tracing import otlp_requested
from services.api_gateway.entrypoints.sse import exec_events, idle_ticks

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("env", "on"), [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "console"}, False),
])
def test_otlp_export_only_when_the_standard_variables_ask(env, on):
    assert otlp_requested(env) is on


def _line(msg: str) -> dict:
    record = logging.LogRecord("corral.t", logging.INFO, __file__, 1, msg, None, None)
    return json.loads(JsonFormatter().format(record))


def test_log_lines_carry_the_current_trace_and_span_ids():
    assert "trace_id" not in _line("outside any span")
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("work") as span:
        doc = _line("inside")
    ctx = span.get_span_context()
    assert doc["trace_id"] == format(ctx.trace_id, "032x")
    assert doc["span_id"] == format(ctx.span_id, "016x")
    assert trace.get_current_span().get_span_context().is_valid is False


async def _slow(items, gap_s):
    for x in items:
        await asyncio.sleep(gap_s)
        yield x


async def test_idle_ticks_mark_silence_and_keep_every_item_in_order():
    got = [x async for x in idle_ticks(_slow([1, 2], 0.35), every_s=0.1)]
    assert [x for x in got if x is not None] == [1, 2]
    assert got.count(None) >= 4  # about three ticks before each item


async def test_a_silent_command_streams_keepalive_comments_then_its_exit():
    from contracts.rpc import HostExecChunk, HostExecResult

    chunks = _slow([HostExecChunk(stream="exit", result=HostExecResult(
        exit_code=0, stdout="", stderr="", duration_ms=500, timed_out=False,
        truncated=False))], 0.35)
    out = [b async for b in exec_events(chunks, "op_1", keepalive_s=0.1)]
    assert out[0] == b": keepalive\n\n" and out.count(b": keepalive\n\n") >= 2
    assert out[-1].startswith(b"event: exit\n")


async def test_closing_a_stream_mid_wait_closes_its_source_cleanly():
    closed = asyncio.Event()

    async def forever():
        try:
            await asyncio.sleep(3600)
            yield None
        finally:
            closed.set()

    events = exec_events(forever(), "op_1", keepalive_s=0.05)
    assert await anext(events) == b": keepalive\n\n"
    await events.aclose()  # the client went away
    assert closed.is_set()
