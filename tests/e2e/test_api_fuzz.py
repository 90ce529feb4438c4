"""Property-based fuzzing of the REST API against its own `/openapi.json`.

Schemathesis generates schema-valid (positive) and schema-invalid (negative)
requests for every operation the gateway serves and checks each response:
no 5xx, documented status codes and content types, bodies and headers that
match the documented schemas, and invalid input rejected. One whole platform
runs as processes with the FAKE VMM driver; operations on a sandbox or a
snapshot are fuzzed both against random ids and against one of the caller's.

One test item per (operation, check): a real, unfixed finding is marked
`xfail(strict=True)` for exactly that pair with a concrete repro in the
reason, so fixing it turns the item into an XPASS failure that asks for the
mark to be removed, and every other check on that operation stays enforced.

Not used: `positive_data_acceptance`, because schema-valid input is
legitimately refused by state the schema cannot express (opaque pagination
cursors -> 400, per-org quotas and Idempotency-Key reuse -> 422, duplicate
names -> 409). Reproducible: fixed Hypothesis seed, no example database.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import time
from unittest import mock

import httpx
import pytest
import requests
import schemathesis  # the `test` extra; a missing fuzzer must fail loudly, not skip
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi import checks as oas_checks

from .conftest import running_stack

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 40  # per operation and generation mode: ~30 operations in about a minute
REQUEST_TIMEOUT_S = 30  # a hang is a finding (responds_in_time), not a stuck CI job
# Invalid input is rejected with the statuses schemathesis expects, plus 413: a
# body over the API's size limit is refused for its size (API.md), whatever else
# is wrong with it.
CONFIG = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {
    "expected-statuses": ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422",
                          "428", "429", "5xx"]}}})
# Image build bodies are archives: fuzzed as raw bytes, like file uploads.
schemathesis.serializer.alias(["application/x-tar", "application/vnd.oci.image.layout.v1+tar"],
                              "application/octet-stream")
CHECKS = {f.__name__: f for f in (
    not_a_server_error,
    oas_checks.status_code_conformance,
    oas_checks.content_type_conformance,
    oas_checks.response_schema_conformance,
    oas_checks.response_headers_conformance,
    oas_checks.negative_data_rejection,
)}
# Operations that talk to the guest: the FAKE driver has none (a running
# sandbox answers 503 there), so their "real sandbox" is a stopped one.
GUEST_PATHS = ("/exec", "/files", "/processes")


def _collected_spec() -> dict:
    """The document the gateway serves, built from its app without a stack, so
    that test items exist per operation at collection time. The live document
    is compared with it at run time (test_served_spec_is_the_collected_one)."""
    from services.api_gateway.entrypoints.http_app import create_app
    ctx = mock.MagicMock()
    ctx.settings.max_body_bytes = 1 << 20
    return create_app(ctx).openapi()


def _labels(spec: dict) -> list[str]:
    methods = {"get", "put", "post", "delete", "patch", "head", "options"}
    return [f"{m.upper()} {p}" for p, item in spec["paths"].items() for m in item if m in methods]


SPEC = _collected_spec()
OPERATIONS = _labels(SPEC)


def _known_findings(spec: dict) -> dict[tuple[str, str], str]:
    """(operation, check) -> concrete repro, for real findings not fixed yet.

    F1-F5 (undocumented error statuses, 422 shape, idempotent wait replays,
    wait timeouts as 5xx, unvalidated fork env) were fixed; add new ones here
    with a repro rather than weakening a check."""
    return {}


KNOWN = _known_findings(SPEC)


def _params():
    for label in OPERATIONS:
        for check in (*CHECKS, "responds_in_time"):
            marks = ()
            if (label, check) in KNOWN:
                marks = (pytest.mark.xfail(strict=True, raises=AssertionError,
                                       reason=KNOWN[(label, check)]),)
            yield pytest.param(label, check, id=f"{label}::{check}", marks=marks)


@dataclasses.dataclass
class Finding:
    status: int
    curl: str
    message: str


@pytest.fixture(scope="module")
def fstack(tmp_path_factory):
    # the fuzzer creates many sandboxes: quotas and the create rate are tested elsewhere
    env = {"CORRAL_QUOTA_CREATES_PER_MINUTE": "100000", "CORRAL_QUOTA_MAX_LIVE": "10000",
           "CORRAL_QUOTA_OPS": ",".join(f"{k}=1000/100000"
                                        for k in ("exec", "files", "snapshot", "fork")),
           "CORRAL_QUOTA_MAX_SNAPSHOTS": "100000", "CORRAL_QUOTA_MAX_SNAPSHOT_MIB": "100000000"}
    with running_stack(tmp_path_factory.mktemp("fuzz"), "fake", env) as st_:
        yield st_


@pytest.fixture(scope="module")
def schema(fstack):
    return schemathesis.openapi.from_url(fstack.api_url + "/openapi.json", config=CONFIG)


class _TooSlow(Exception):
    pass


SSE_SAMPLE_S = 0.25


def _sample_event_streams(resp: requests.Response, *args, **kwargs) -> requests.Response:
    """A response hook: an event stream never ends by itself, so its body is what
    it sends in SSE_SAMPLE_S (then the client hangs up, as a real one would)."""
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        resp._content = _sample(resp, SSE_SAMPLE_S)
        resp._content_consumed = True
    return resp


def _sample(resp: requests.Response, seconds: float) -> bytes:
    """What an endless event stream sends until it is quiet for `seconds`."""
    sock = getattr(getattr(resp.raw, "connection", None), "sock", None)
    assert sock is not None, "cannot bound the read of an event stream"
    sock.settimeout(seconds)
    chunks: list[bytes] = []
    try:
        for chunk in resp.iter_content(1024):
            chunks.append(chunk)
    except (requests.ConnectionError, requests.Timeout, OSError):
        pass  # quiet for `seconds`: that is all it had to say
    resp.close()
    return b"".join(chunks)


def _created_sandboxes(method: str, resp) -> list[str]:
    """Ids of sandboxes a POST just created (create, fork), to give capacity back."""
    if method != "POST" or resp.status_code not in (200, 201, 202, 207):
        return []
    try:
        doc = resp.json()
    except ValueError:
        return []
    items = doc.get("items", [doc]) if isinstance(doc, dict) else []
    return [x["id"] for x in items if isinstance(x, dict) and "vcpus" in x and "id" in x
            and "sandbox_id" not in x]


@pytest.fixture(scope="module")
def fuzz(fstack, schema):
    """op label -> ({check name: smallest failing example}, status histogram);
    each operation is fuzzed once, lazily."""
    org = httpx.Client(base_url=fstack.api_url, timeout=60,
                       headers={"Authorization": f"Bearer {fstack.creds.api_key}"})
    session = requests.Session()
    session.hooks["response"].append(_sample_event_streams)

    def sandbox(state: str = "running") -> str:
        r = org.post("/v1/sandboxes?wait=true", json={"ttl_seconds": 3600})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        if state == "stopped":
            assert org.post(f"/v1/sandboxes/{sid}/stop").status_code == 202
            deadline = time.monotonic() + 30
            while org.get(f"/v1/sandboxes/{sid}").json()["state"] != "stopped":
                assert time.monotonic() < deadline, "sandbox did not stop"
                time.sleep(0.05)
        return sid

    def snapshot() -> str:
        r = org.post(f"/v1/sandboxes/{sandbox()}/snapshots?wait=true&timeout_s=30",
                     json={"name": "fuzz"})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    @functools.cache
    def run(label: str) -> tuple[dict[str, Finding], collections.Counter]:
        op = schema.find_operation_by_label(label)
        assert op is not None, f"{label} is not in the served /openapi.json"
        key = fstack.creds.admin_key if "admin" in (op.tags or []) else fstack.creds.api_key
        auth = {"authorization": f"Bearer {key}"}
        fixed: list[dict] = [{}]  # random ids, and the caller's own resources
        if "{sandbox_id}" in op.path:
            guest = any(g in op.path for g in GUEST_PATHS)
            fixed.append({"sandbox_id": sandbox("stopped" if guest else "running")})
        if "{snapshot_id}" in op.path:
            fixed.append({"snapshot_id": snapshot()})
        found: dict[str, Finding] = {}
        statuses: collections.Counter = collections.Counter()

        def record(name: str, case, status: int, message: str) -> None:
            curl = case.as_curl_command(headers=auth, base_url=fstack.api_url)
            if name not in found or len(curl) < len(found[name].curl):
                found[name] = Finding(status, curl, message[:1500])

        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = st.one_of([op.as_strategy(mode, headers=auth, path_parameters=pp or None)
                                  for pp in fixed])

            @settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None,
                      deadline=None, phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def one(case):
                try:
                    resp = case.call(base_url=fstack.api_url, session=session,
                                     timeout=REQUEST_TIMEOUT_S)
                except requests.Timeout as e:  # a finding; stop fuzzing this operation
                    record("responds_in_time", case, 0, f"no answer in {REQUEST_TIMEOUT_S}s: {e}")
                    raise _TooSlow() from None
                statuses[resp.status_code] += 1
                for name, check in CHECKS.items():
                    try:
                        case.validate_response(resp, checks=[check], headers=auth)
                    except (FailureGroup, AssertionError) as e:
                        record(name, case, resp.status_code, str(e))
                for sid in _created_sandboxes(op.method.upper(), resp):
                    org.delete(f"/v1/sandboxes/{sid}")  # give the capacity back

            try:
                one()
            except _TooSlow:
                break
            except Unsatisfiable:  # nothing to negate (no parameters, no body)
                if mode is GenerationMode.POSITIVE:
                    raise
        return found, statuses

    yield run
    org.close()
    session.close()


def test_fuzz_is_authenticated_and_reaches_real_resources(fuzz):
    """Guards against a vacuous run: undocumented statuses are expected to fail
    (F1), which would otherwise hide a fuzzer that never got past auth."""
    for label in OPERATIONS:
        statuses = fuzz(label)[1]
        assert sum(statuses.values()) > 0, label
        if label not in ("GET /healthz", "GET /readyz"):
            assert not {401, 403} & statuses.keys(), (label, statuses)
        if "{sandbox_id}" in label or "{snapshot_id}" in label:
            # the caller's own resource was hit, not only unknown ids
            assert statuses.keys() - {404, 422}, (label, statuses)


def test_served_spec_is_the_collected_one(fstack):
    """The items below were generated from the app; the stack must serve the same operations."""
    served = httpx.get(fstack.api_url + "/openapi.json").json()
    assert sorted(_labels(served)) == sorted(OPERATIONS)


@pytest.mark.parametrize(("label", "check"), list(_params()))
def test_fuzz(fuzz, label, check):
    f = fuzz(label)[0].get(check)
    assert f is None, (f"{check} failed on {label} ({f.status}); smallest example:\n"
                       f"{f.curl}\n\n{f.message}")
