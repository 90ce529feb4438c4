"""Property-based fuzzing of the REST API against its own `/openapi.json`.

Schemathesis generates schema-valid (positive) and schema-invalid (negative)
requests for every operation the gateway serves and checks each response:
no 5xx, documented status codes and content types, bodies and headers that
match the documented schemas, and invalid input rejected. One whole platform
runs as processes with the FAKE VMM driver; sandbox-scoped operations are
fuzzed both against random ids and against a real sandbox of the caller.

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
import uuid
from unittest import mock

import httpx
import pytest
import requests

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402
from schemathesis.specs.openapi import checks as oas_checks  # noqa: E402

from corral.devstack import DevStack  # noqa: E402

from .conftest import e2e_env  # noqa: E402

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 40  # per operation and generation mode; ~17 operations in well under 2 min
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
GUEST_PATHS = ("/exec", "/files")


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

    F1 and F2 are derived from the document so that a new route carrying the
    same defect is expected to carry it (and XPASSes once it does not)."""
    undocumented = ("F1: statuses the gateway really returns are missing from /openapi.json "
                    "(only the success code and 422 are documented); repro: ")
    problem_422 = ("F2: 422 is documented as application/json HTTPValidationError "
                   "{'detail': [...]} but served as application/problem+json "
                   "{'type','title','status','detail': str,'op_id','errors'}; repro: ")
    known = {}
    for label in _labels(spec):
        method, path = label.split(" ", 1)
        op = spec["paths"][path][method.lower()]
        params = [p for p in op.get("parameters", []) if p["name"].lower() != "authorization"]
        body = op.get("requestBody", {}).get("content", {})
        if "{" in path:
            nope = path
            for p in params:
                if p["in"] == "path":
                    nope = nope.replace("{%s}" % p["name"], "nope")
            known[(label, "status_code_conformance")] = (
                undocumented + f"{method} {nope} (valid query/body) -> 404")
        elif "application/json" in body:
            known[(label, "status_code_conformance")] = (
                undocumented + f"{method} {path} with body b'\\xff' "
                "(Content-Type: application/json) -> 400 'There was an error parsing the body'")
        if params or body:
            known[(label, "content_type_conformance")] = (
                problem_422 + "GET /v1/sandboxes?limit=0 -> 422 application/problem+json")
    known[("GET /v1/sandboxes", "status_code_conformance")] = (
        undocumented + "GET /v1/sandboxes?cursor=%C3%9F -> 400 'invalid cursor'")
    known[("POST /v1/sandboxes", "not_a_server_error")] = (
        "F3: an idempotent replay of POST /v1/sandboxes?wait=true whose sandbox was since "
        "deleted (or stopped) answers 502 sandbox-failed 'sandbox did not start: it is "
        "destroyed' instead of the original 201; repro: POST /v1/sandboxes?wait=true "
        "Idempotency-Key: k {} -> 201; DELETE it; wait for destroyed; repeat the POST -> 502. "
        "Also F4: ?wait=true&timeout_s=0.001 -> 504 wait-timeout although the create succeeded")
    return known


KNOWN = _known_findings(SPEC)


def _params():
    for label in OPERATIONS:
        for check in CHECKS:
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
    env = {**e2e_env("fake"), "CORRAL_QUOTA_CREATES_PER_MINUTE": "100000",
           "CORRAL_QUOTA_MAX_LIVE": "10000"}
    st_ = DevStack(tmp_path_factory.mktemp("fuzz"), driver="fake", extra_env=env)
    try:
        st_.start(timeout_s=180)
        yield st_
    finally:
        st_.stop()


@pytest.fixture(scope="module")
def schema(fstack):
    return schemathesis.openapi.from_url(fstack.api_url + "/openapi.json",
                                         config=schemathesis.Config())


@pytest.fixture(scope="module")
def fuzz(fstack, schema):
    """op label -> {check name: smallest failing example}; each operation fuzzed once."""
    org = httpx.Client(base_url=fstack.api_url, timeout=60,
                       headers={"Authorization": f"Bearer {fstack.creds.api_key}"})
    session = requests.Session()

    def sandbox(state: str) -> str:
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

    @functools.cache
    def run(label: str) -> tuple[dict[str, Finding], collections.Counter]:
        op = schema.find_operation_by_label(label)
        assert op is not None, f"{label} is not in the served /openapi.json"
        key = fstack.creds.admin_key if "admin" in (op.tags or []) else fstack.creds.api_key
        auth = {"authorization": f"Bearer {key}"}
        fixed: list[dict] = [{}]
        if "{sandbox_id}" in op.path:
            mine = sandbox("stopped" if any(g in op.path for g in GUEST_PATHS) else "running")
            fixed.append({"sandbox_id": mine})
        found: dict[str, Finding] = {}
        statuses: collections.Counter = collections.Counter()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = st.one_of([op.as_strategy(mode, headers=auth, path_parameters=pp or None)
                                  for pp in fixed])

            @settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None,
                      deadline=None, phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def one(case):
                resp = case.call(base_url=fstack.api_url, session=session, timeout=60)
                statuses[resp.status_code] += 1
                for name, check in CHECKS.items():
                    try:
                        case.validate_response(resp, checks=[check], headers=auth)
                    except (FailureGroup, AssertionError) as e:
                        curl = case.as_curl_command(headers=auth, base_url=fstack.api_url)
                        if name not in found or len(curl) < len(found[name].curl):
                            found[name] = Finding(resp.status_code, curl, str(e)[:1500])
                if label == "POST /v1/sandboxes" and resp.status_code in (201, 202):
                    org.delete(f"/v1/sandboxes/{resp.json()['id']}")  # keep capacity free

            try:
                one()
            except Unsatisfiable:  # nothing to negate (no parameters, no body)
                if mode is GenerationMode.POSITIVE:
                    raise
        return found, statuses

    yield run
    org.close()
    session.close()


def test_fuzz_is_authenticated_and_reaches_real_sandboxes(fuzz):
    """Guards against a vacuous run: undocumented statuses are expected to fail
    (F1), which would otherwise hide a fuzzer that never got past auth."""
    for label in OPERATIONS:
        statuses = fuzz(label)[1]
        assert sum(statuses.values()) > 0, label
        if label not in ("GET /healthz", "GET /readyz"):
            assert not {401, 403} & statuses.keys(), (label, statuses)
        if "{sandbox_id}" in label:  # the caller's own sandbox was hit, not only unknown ids
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
