"""Bus contracts: committed docs are current, messages parse strictly, subjects
land in streams and consumers, and ids make valid NATS tokens."""
from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest
import yaml

from common.bus import DeadLetter as BusDeadLetter
from contracts import ALL_TYPES, InvalidMessage, parse_message
from contracts.host import BusProbe, HostInventory, HostReconciled, InventoryItem
from contracts.sandbox import SandboxRecovered
from contracts.commands import (DestroySandbox, PauseSandbox, ResumeSandbox, StartSandbox,
                                StopSandbox)
from contracts.export import ROOT, DeadLetter, nats_match, rpc_models, stale
from contracts.image import (BuildImage, DeleteImage, ImageBuildFailed, ImageBuildLogged,
                             ImageBuildRequested, ImageBuildScheduled, ImageBuilt, ImageDeleted,
                             ImageDeleteRequested)
from contracts.host import HostCapacity, HostHeartbeat, HostLost, HostRegistered, HostRevoked
from contracts.registry import BY_NAME
from contracts.sandbox import (Failure, SandboxDestroyed, SandboxDestroyRequested, SandboxExpiring,
                               SandboxFailed, SandboxLost, SandboxPaused, SandboxPauseRequested,
                               SandboxRequested, SandboxResumed, SandboxResumeRequested,
                               SandboxScheduled, SandboxSpec, SandboxStarted, SandboxStarting,
                               SandboxStartRequested, SandboxStopped, SandboxStopRequested,
                               SandboxTtlExtended)
from contracts.snapshot import (DeleteSnapshot, SnapshotCreated, SnapshotDeleted,
                                SnapshotDeleteRequested, SnapshotFailed, SnapshotRequested,
                                TakeSnapshot)
from contracts.subjects import (CONSUMERS, HOST_FACT_TYPES, STREAMS, dlq_subject,
                                host_agent_consumer, host_command_subject, host_fact_subject,
                                host_subject, sandbox_subject, subject_for, usage_subject)
from contracts.usage import SpendThresholdCrossed, UsageRecorded

pytestmark = pytest.mark.unit

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
T0 = datetime(2025, 1, 1, tzinfo=UTC)
IDS = dict(op_id="op-1", org_id="org-1", sandbox_id="sbx-1")
IMG = dict(op_id="op-1", org_id="org-1", image_id="img-1")
IMAGE_REQ = ImageBuildRequested(name="node-app", context_bytes=10240, context_sha256="a" * 64,
                                bases={"base": "c-" + "b" * 40}, **IMG)
CAP = HostCapacity(vcpus=8, memory_mib=4096, max_sandboxes=4)
SAMPLES = [
    SandboxRequested(spec=SandboxSpec(name="build-42", env={"K": "V"}), request_hash="h",
                     traceparent=TP, **IDS),
    SandboxScheduled(host_id="h-1", **IDS),
    SandboxStarting(host_id="h-1", **IDS),
    SandboxStarted(host_id="h-1", vcpus=1, memory_mib=256, accel="kvm", ip="10.88.0.2",
                   boot_ms=120, **IDS),
    SandboxFailed(failure=Failure(code="boot_failed", message="x"), **IDS),
    SandboxStopRequested(**IDS),
    SandboxStopped(host_id="h-1", **IDS),
    SandboxDestroyRequested(**IDS),
    SandboxDestroyed(**IDS),
    SandboxLost(host_id="h-1", reason="host lost", **IDS),
    SandboxExpiring(expires_at=T0, **IDS),
    SandboxTtlExtended(expires_at=T0, ttl_seconds=600, **IDS),
    SandboxPauseRequested(**IDS),
    SandboxPaused(host_id="h-1", **IDS),
    SandboxResumeRequested(**IDS),
    SandboxResumed(host_id="h-1", **IDS),
    SandboxStartRequested(**IDS),
    HostRegistered(op_id="op-1", host_id="h-1", hostname="node1", capacity=CAP, accel="kvm",
                   agent_version="0.1.0"),
    HostHeartbeat(op_id="op-1", host_id="h-1", seq=3, accel="kvm", capacity=CAP, running=1,
                  used_vcpus=1, used_memory_mib=256, interval_s=2.0),
    HostLost(op_id="op-1", host_id="h-1", last_seen=T0.isoformat(), timeout_s=6.0),
    HostRevoked(op_id="op-1", host_id="h-1"),
    HostInventory(op_id="op-1", host_id="h-1", builds=["img-1"], sandboxes=[
        InventoryItem(sandbox_id="sb-1", org_id="org-1", state="running")]),
    HostReconciled(op_id="op-1", host_id="h-1", inventory_id="ev-1", adopted=["sb-1"],
                   counts={"adopted": 1, "destroyed": 0, "lost": 0, "released": 0}),
    BusProbe(op_id="op-1", instance="0"),
    SandboxRecovered(host_id="h-1", state="running", lost_at=T0, vcpus=1, memory_mib=256,
                     **IDS),
    UsageRecorded(period_start=T0, period_end=T0, vcpu_seconds=1.5, memory_mib_seconds=384.0,
                  host_id="h-1", **IDS),
    SpendThresholdCrossed(op_id="op-1", org_id="org-1", month="2026-12", percent=80,
                          used_vcpu_seconds=80.5, cap_vcpu_seconds=100),
    StartSandbox(host_id="h-1", spec=SandboxSpec(), **IDS),
    StopSandbox(host_id="h-1", **IDS),
    DestroySandbox(host_id="h-1", **IDS),
    PauseSandbox(host_id="h-1", **IDS),
    ResumeSandbox(host_id="h-1", **IDS),
    SnapshotRequested(snapshot_id="snap-1", name="before-tests", **IDS),
    SnapshotCreated(snapshot_id="snap-1", host_id="h-1", image="default", vcpus=1,
                    memory_mib=256, size_bytes=70_000_000, took_ms=180, **IDS),
    SnapshotFailed(snapshot_id="snap-1", failure=Failure(code="x", message="y"), **IDS),
    SnapshotDeleteRequested(snapshot_id="snap-1", host_id="h-1", **IDS),
    SnapshotDeleted(snapshot_id="snap-1", host_id="h-1", **IDS),
    TakeSnapshot(host_id="h-1", snapshot_id="snap-1", **IDS),
    DeleteSnapshot(host_id="h-1", snapshot_id="snap-1", **IDS),
    IMAGE_REQ,
    ImageBuildScheduled(host_id="h-1", **IMG),
    ImageBuildLogged(host_id="h-1", seq=0, text="Step 1/2: RUN true\n", **IMG),
    ImageBuilt(host_id="h-1", digest="d" * 64, ref="c-" + "d" * 40, size_bytes=400 << 20,
               took_ms=9000, config={"env": {"A": "1"}, "cwd": "/srv"},
               steps=[{"line": 2, "op": "run", "cached": False, "ms": 8000}], **IMG),
    ImageBuildFailed(host_id="h-1", failure=Failure(code="build_failed", message="x"), line=3,
                     **IMG),
    ImageDeleteRequested(host_id="h-1", digest="d" * 64, **IMG),
    ImageDeleted(host_id="h-1", **IMG),
    BuildImage(host_id="h-1", request=IMAGE_REQ, **IMG),
    DeleteImage(host_id="h-1", digest="d" * 64, **IMG),
]


def _doc(msg) -> dict:
    return json.loads(msg.to_json())


def _raw(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def _within(inner: str, outer: str) -> bool:
    """Every subject matched by pattern `inner` is matched by pattern `outer`."""
    a, b = inner.split("."), outer.split(".")
    for i, tok in enumerate(b):
        if tok == ">":
            return len(a) > i
        if i >= len(a) or a[i] == ">" or (tok != "*" and (a[i] == "*" or a[i] != tok)):
            return False
    return len(a) == len(b)


def _valid_token(tok: str) -> bool:
    return bool(tok) and not any(c in tok for c in ".*> \t\r\n\0")


# --- committed docs ---------------------------------------------------------

def test_committed_contract_docs_are_current():
    _, changed, extra = stale(ROOT)
    assert not changed and not extra, (
        f"docs/schemas or docs/asyncapi.yaml out of date ({', '.join(changed + extra)}): "
        "run `make schemas`")


def test_asyncapi_lists_every_type_and_stream():
    doc = yaml.safe_load((ROOT / "docs/asyncapi.yaml").read_text())
    assert doc["asyncapi"].startswith("3.")
    assert {t.model_fields["type"].default for t in ALL_TYPES} <= set(doc["components"]["messages"])
    assert [s["name"] for s in doc["x-jetstream"]["streams"]] == [s.name for s in STREAMS]
    assert {c["durable"] for c in doc["x-jetstream"]["consumers"]} == {c.durable for c in CONSUMERS}
    for op in doc["operations"].values():  # every operation names a real channel
        assert op["channel"]["$ref"].removeprefix("#/channels/") in doc["channels"]
    for m in rpc_models():
        assert (ROOT / f"docs/schemas/rpc/{m.__name__}.json").is_file()


def test_dead_letter_doc_mirrors_bus_dead_letter():
    assert set(DeadLetter.model_fields) == {f.name for f in dataclasses.fields(BusDeadLetter)}


# --- parsing ----------------------------------------------------------------

def test_samples_cover_every_type():
    assert {type(m) for m in SAMPLES} == set(ALL_TYPES)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: m.type)
def test_round_trip(msg):
    back = parse_message(msg.to_json())
    assert type(back) is type(msg) and back == msg
    assert BY_NAME[msg.type] is type(msg)


def _broken(msg, how: str) -> bytes:
    doc = _doc(msg)
    if how == "unknown-type":
        doc["type"] = "SandboxExploded"
    elif how == "newer-version":
        doc["version"] = 2
    elif how == "extra-field":
        doc["surprise"] = 1
    elif how == "missing-field":
        del doc["op_id"]
    elif how == "bad-traceparent":
        doc["traceparent"] = "not-a-trace"
    elif how == "not-json":
        return b"{nope"
    elif how == "not-object":
        return b"[1, 2]"
    return _raw(doc)


@pytest.mark.parametrize("how", ["unknown-type", "newer-version", "extra-field", "missing-field",
                                 "bad-traceparent", "not-json", "not-object"])
@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: m.type)
def test_invalid_messages_rejected_with_reason(msg, how):
    with pytest.raises(InvalidMessage) as e:
        parse_message(_broken(msg, how))
    assert e.value.reason


def test_supported_versions_raise_the_bar():
    doc = _doc(SAMPLES[1]) | {"version": 2}
    assert parse_message(_raw(doc), {"SandboxScheduled": 2}).version == 2


# --- subjects, streams, consumers -------------------------------------------

def test_matcher():
    assert nats_match("a.*.c", "a.b.c") and nats_match("a.>", "a.b.c")
    assert not nats_match("a.>", "a") and not nats_match("a.*", "a.b.c")
    assert _within("a.*.c", "a.>") and _within("a.b.c", "a.*.c")
    assert not _within("a.>", "a.*") and not _within("a.*", "a.b")


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: m.type)
def test_every_type_maps_to_exactly_one_stream(msg):
    for subject in [subject_for(msg)] + ([subject_for(msg, "h-1")]
                                         if msg.type in HOST_FACT_TYPES else []):
        assert all(_valid_token(t) for t in subject.split("."))
        homes = [s.name for s in STREAMS if any(nats_match(p, subject) for p in s.subjects)]
        assert len(homes) == 1, (subject, homes)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: m.type)
def test_a_message_must_be_what_its_subject_says(msg):
    """Received with its subject, a message is checked against it: a host's
    facts only under its own id, of the types a host reports, about the sandbox
    and org the subject names."""
    raw = msg.to_json()
    assert parse_message(raw, subject=subject_for(msg)).via_host is None
    if msg.type in HOST_FACT_TYPES:
        if getattr(msg, "host_id", None) is None:  # also a control-plane fact
            with pytest.raises(InvalidMessage):  # a host's report names the host
                parse_message(raw, subject=subject_for(msg, "h-1"))
            msg = msg.model_copy(update={"host_id": "h-1"})
            raw = msg.to_json()
        assert parse_message(raw, subject=subject_for(msg, "h-1")).via_host == "h-1"
        with pytest.raises(InvalidMessage):  # h-2 reporting what h-1 did
            parse_message(raw, subject=subject_for(msg, "h-2"))
    elif msg.KIND == "event" and msg.type.startswith(("Sandbox", "Snapshot")):
        with pytest.raises(InvalidMessage):  # a control-plane fact is never a host's
            parse_message(raw, subject=host_fact_subject("h-1", "org-1", "sbx-1", msg.type))
    elsewhere = "corral.evt.sandbox.org-2.sbx-1." + msg.type
    with pytest.raises(InvalidMessage):  # another org's subject, or another family
        parse_message(raw, subject=elsewhere)


def test_streams_do_not_overlap():
    pats = [(s.name, p) for s in STREAMS for p in s.subjects]
    for i, (n1, p1) in enumerate(pats):
        for n2, p2 in pats[i + 1:]:
            assert not (_within(p1, p2) or _within(p2, p1)), (n1, n2)


@pytest.mark.parametrize("c", CONSUMERS + (host_agent_consumer("h-1"),), ids=lambda c: c.durable)
def test_consumer_filters_inside_its_stream(c):
    stream = {s.name: s for s in STREAMS}[c.stream]
    assert c.filter_subjects
    for f in c.filter_subjects:
        assert any(_within(f, p) for p in stream.subjects), (c.durable, f)
    assert _valid_token(c.durable) and _valid_token(dlq_subject(c.durable).split(".")[-1])


def _all_subjects() -> list[str]:
    """Where each sample goes, from the control plane and (for what a host may
    report) from host h-1."""
    return [subject_for(m) for m in SAMPLES] + [
        subject_for(m, "h-1") for m in SAMPLES if m.type in HOST_FACT_TYPES]


@pytest.mark.parametrize("c", CONSUMERS, ids=lambda c: c.durable)
def test_consumer_filters_match_some_type(c):
    subjects = _all_subjects()
    for f in c.filter_subjects:
        assert any(nats_match(f, s) for s in subjects), f"{c.durable}: {f} matches no type"


def test_host_consumer_sees_only_its_host():
    mine, other = host_agent_consumer("h-1"), host_command_subject("h-2", "sbx-1", "StopSandbox")
    assert not any(nats_match(f, other) for f in mine.filter_subjects)
    assert any(nats_match(f, host_command_subject("h-1", "s", "StopSandbox"))
               for f in mine.filter_subjects)


ODD_IDS = ["a.b", "a*", "a>", "a b", "x\n", ""]


@pytest.mark.parametrize("bad", ODD_IDS)
def test_ids_accepted_by_contracts_are_valid_subject_tokens(bad):
    """Any id a contract accepts must be one NATS token in every subject built from it."""
    accepted = []
    for msg in SAMPLES:
        for field in ("org_id", "sandbox_id", "host_id"):
            if getattr(msg, field, None) is None:
                continue
            try:
                odd = type(msg).model_validate(_doc(msg) | {field: bad})
            except ValueError:
                continue
            accepted.append((msg.type, field, subject_for(odd)))
    for kind, field, subject in accepted:
        parts = subject.split(".")
        assert all(_valid_token(t) for t in parts), f"{kind}.{field}={bad!r} -> {subject!r}"
        assert len(parts) == len(subject_for(BY_NAME[kind].model_validate(
            _doc(next(m for m in SAMPLES if m.type == kind)))).split("."))


def test_subject_builders_use_ids_as_single_tokens():
    for subject, n in [(sandbox_subject("o", "s", "T"), 6), (host_subject("h", "T"), 5),
                       (usage_subject("o", "s"), 6), (host_command_subject("h", "s", "T"), 6),
                       (dlq_subject("c"), 3)]:
        assert len(subject.split(".")) == n and all(map(_valid_token, subject.split(".")))


def test_export_check_mode(tmp_path, capsys):
    from contracts.export import main
    assert main(["--check", "--root", str(tmp_path)]) == 1
    assert not (tmp_path / "docs").exists()  # check writes nothing
    assert main(["--root", str(tmp_path)]) == 0
    assert main(["--check", "--root", str(tmp_path)]) == 0
    (tmp_path / "docs/schemas/HostLost.json").write_text("{}\n")
    (tmp_path / "docs/schemas/Gone.json").write_text("{}\n")
    capsys.readouterr()
    assert main(["--check", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "HostLost.json" in out.out and "Gone.json" in out.out and "make schemas" in out.err
    assert main(["--root", str(tmp_path)]) == 0 and not (tmp_path / "docs/schemas/Gone.json").exists()
