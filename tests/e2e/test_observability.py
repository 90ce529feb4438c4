"""Traces and metrics of a running stack (FAKE driver):

- spans exported over OTLP/HTTP (the standard OTEL_* variables) to a local
  receiver: one create's spans from the gateway, the scheduler and the host
  agent share the trace id of the caller's `traceparent`, and the gateway's
  server span continues the caller's span; messaging spans carry the
  semantic-convention attributes; log lines carry the trace id;
- every service's /metrics, scraped after a few creates, holds the create
  latency histogram, sandboxes by state, host capacity and use, consumer lag,
  relay backlog and dead letters, with the values those creates imply.
"""
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)
from prometheus_client.parser import text_string_to_metric_families

from .conftest import running_stack
from .stack import Api

pytestmark = pytest.mark.e2e


class OtlpReceiver:
    """POST /v1/traces (protobuf) into a list of (service, span) pairs."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []
        lock = threading.Lock()
        spans = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                req = ExportTraceServiceRequest.FromString(body)
                with lock:
                    for rs in req.resource_spans:
                        service = next((a.value.string_value for a in rs.resource.attributes
                                        if a.key == "service.name"), "?")
                        for ss in rs.scope_spans:
                            spans.extend((service, sp) for sp in ss.spans)
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *_a) -> None:
                return None  # no access lines on the test's stderr

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of_trace(self, trace_id: str) -> list[tuple[str, object]]:
        return [(svc, sp) for svc, sp in list(self.spans) if sp.trace_id.hex() == trace_id]


def attrs(span) -> dict:
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = v.string_value or v.int_value or v.bool_value or v.double_value
    return out


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    receiver = OtlpReceiver()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "200",
           "CORRAL_METRICS_INTERVAL_S": "0.5"}
    with running_stack(tmp_path_factory.mktemp("obs"), driver="fake", env=env) as st:
        yield st, receiver
    receiver.server.shutdown()


def test_one_create_is_one_trace_across_gateway_scheduler_and_host_agent(observed):
    st, receiver = observed
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    api = Api(st.api_url, st.creds.api_key)
    r = api.post("/v1/sandboxes?wait=true", json={},
                 headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    assert r.status_code in (200, 201), r.text
    want = {"corral-api_gateway", "corral-scheduler", "corral-host_agent"}

    def continued(spans) -> bool:
        """The gateway's server span (kind SERVER) is a child of the caller's,
        named by its route template."""
        return any(svc == "corral-api_gateway" and sp.kind == 2
                   and sp.parent_span_id.hex() == parent and sp.name == "POST /v1/sandboxes"
                   and attrs(sp).get("http.route") == "/v1/sandboxes" for svc, sp in spans)
    deadline = time.monotonic() + 30  # spans arrive in batches, each as its span ends
    while not ({svc for svc, _ in receiver.of_trace(trace_id)} >= want
               and continued(receiver.of_trace(trace_id))):
        assert time.monotonic() < deadline, [
            (svc, sp.name, sp.kind, sp.parent_span_id.hex())
            for svc, sp in receiver.of_trace(trace_id)]
        time.sleep(0.2)
    spans = receiver.of_trace(trace_id)
    processed = {(svc, attrs(sp).get("messaging.consumer.group.name")) for svc, sp in spans
                 if attrs(sp).get("messaging.operation.type") == "process"}
    assert ("corral-scheduler", "scheduler-placement") in processed, processed
    assert any(svc == "corral-host_agent" for svc, _ in processed), processed
    for _, sp in spans:
        a = attrs(sp)
        if a.get("messaging.operation.type") in ("process", "send"):
            assert a["messaging.system"] == "nats" and a["messaging.destination.name"], a
            assert a["messaging.message.id"], a
    # the gateway's log lines of that request carry its trace id
    lines = [json.loads(x) for x in
             (st.state_dir / "logs" / "api_gateway.log").read_text().splitlines()
             if trace_id in x]
    assert lines and all(x["trace_id"] == trace_id and len(x["span_id"]) == 16 for x in lines)


def scrape(st, name: str) -> dict[tuple[str, tuple], float]:
    r = httpx.get(f"http://127.0.0.1:{st.health_ports[name]}/metrics", timeout=5)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict, name: str, **labels) -> float | None:
    return m.get((name, tuple(sorted(labels.items()))))


def test_metrics_of_every_service_after_a_few_creates(observed):
    st, _ = observed
    api = Api(st.api_url, st.creds.api_key)
    before = scrape(st, "api_gateway")
    base = sum(v for (n, _), v in before.items() if n == "corral_sandbox_create_seconds_count")
    live = len([x for x in api.get("/v1/sandboxes").json()["items"] if x["state"] == "running"])
    for _ in range(3):
        assert api.post("/v1/sandboxes?wait=true", json={}).status_code in (200, 201)
    want_live = live + 3
    host = st.creds.host_id

    def settled() -> bool:
        gw, sch, ha = scrape(st, "api_gateway"), scrape(st, "scheduler"), scrape(st, "host_agent")
        return (value(gw, "corral_sandboxes", state="running") == want_live
                and value(sch, "corral_host_used", host_id=host, resource="sandboxes") == want_live
                and value(ha, "corral_host_vms") == want_live)
    deadline = time.monotonic() + 20
    while not settled():
        assert time.monotonic() < deadline, "gauges never showed the creates"
        time.sleep(0.3)

    gw = scrape(st, "api_gateway")
    count = sum(v for (n, _), v in gw.items() if n == "corral_sandbox_create_seconds_count")
    total = sum(v for (n, _), v in gw.items() if n == "corral_sandbox_create_seconds_sum")
    assert count == base + 3, (count, base)
    assert 0 < total < 60 * count  # seconds, each a create that finished in time
    assert value(gw, "corral_sandbox_create_seconds_count", start_mode="cold") is not None
    assert value(gw, "corral_sandboxes", state="destroyed") is not None  # 0, not absent
    def drained() -> list[str]:
        """What still shows work under way (lag, unacked, backlog), or dead letters."""
        bad = []
        for name, durable, relay in (("api_gateway", "gateway-sandbox-ingest", "gateway-relay"),
                                     ("scheduler", "scheduler-placement", "scheduler-relay"),
                                     ("billing", "billing-metering", None)):
            m = scrape(st, name)
            for metric in ("corral_bus_consumer_pending", "corral_bus_consumer_ack_pending"):
                if value(m, metric, stream="CORRAL_SANDBOX", consumer=durable) != 0:
                    bad.append(f"{name} {metric}")
            if value(m, "corral_dead_letters_total", consumer=durable) != 0:
                bad.append(f"{name} dead letters")
            if relay and (value(m, "corral_relay_backlog", relay=relay) != 0
                          or (value(m, "corral_relay_published", relay=relay) or 0) < 3):
                bad.append(f"{name} relay")
        return bad
    deadline = time.monotonic() + 20
    while drained():
        assert time.monotonic() < deadline, drained()
        time.sleep(0.3)
    sch = scrape(st, "scheduler")
    assert value(sch, "corral_hosts", status="ready") == 1
    cap = value(sch, "corral_host_capacity", host_id=host, resource="sandboxes")
    assert cap is not None and cap >= want_live
    assert value(sch, "corral_host_used", host_id=host, resource="vcpus") >= want_live
    for name in ("auth", "host_agent", "billing"):
        assert value(scrape(st, name), "process_resident_memory_bytes") > 0
