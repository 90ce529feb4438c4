"""Tracing: W3C trace context through HTTP and NATS headers, spans exported
over OTLP (HTTP/protobuf) when the standard `OTEL_*` variables ask for it.

Export is on when `OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (and `OTEL_TRACES_EXPORTER` is
not `none`, `OTEL_SDK_DISABLED` not `true`); the exporter reads its own
variables (headers, timeout, compression, `OTEL_BSP_*` batching).
`OTEL_SERVICE_NAME` overrides the service name `corral-<service>`.
`CORRAL_TRACE_CONSOLE=1` prints spans to stderr instead, for debugging.
Trace context is propagated, and logged, whether or not spans are exported.
"""
from __future__ import annotations

import logging
import os

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (BatchSpanProcessor, ConsoleSpanExporter,
                                            SimpleSpanProcessor)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger("corral.tracing")
_propagator = TraceContextTextMapPropagator()
_configured = False
_exporting = False


def otlp_requested(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if "otlp" not in env.get("OTEL_TRACES_EXPORTER", "otlp").lower():
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup_tracing(service: str) -> None:
    global _configured, _exporting
    if _configured:
        return
    attrs = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": f"corral-{service}"}
    provider = TracerProvider(resource=Resource.create(attrs))
    if otlp_requested():
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                                  os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"))
        if protocol != "http/protobuf":
            log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported; exporting "
                        "http/protobuf", protocol)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        _exporting = True
    if os.environ.get("CORRAL_TRACE_CONSOLE") == "1":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        _exporting = True
    trace.set_tracer_provider(provider)
    _configured = True


def exporting() -> bool:
    """Spans leave the process (instrument the costly paths only then)."""
    return _exporting


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def context_from(traceparent: str | None) -> Context | None:
    if not traceparent:
        return None
    return _propagator.extract({"traceparent": traceparent})


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span, in hex, if there is one."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def instrument_clients() -> None:
    """Outgoing HTTP (httpx: Stripe, health probes) while spans are exported."""
    if not _exporting:
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor().instrument()


def instrument_engine(engine: object) -> None:
    """A SQLAlchemy engine (sync, or an async one's `sync_engine`): a span
    per statement while spans are exported."""
    if not _exporting:
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    SQLAlchemyInstrumentor().instrument(engine=getattr(engine, "sync_engine", engine))
