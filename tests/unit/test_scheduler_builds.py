"""Image builds on the scheduler's store: placed once like a sandbox (their
VM's size allocated), released when the building host reports the end,
failed (not "lost") when that host is lost, deletes routed to where built."""
import json
import uuid

import pytest

from common.eventstore import store_env
from contracts import parse_message
from contracts.host import HostCapacity, HostRegistered
from contracts.image import ImageBuildRequested, ImageBuilt, ImageDeleteRequested
from contracts.subjects import host_fact_subject
from services.scheduler.application.scheduler import NoCapacity, Scheduler, WrongSource

pytestmark = pytest.mark.unit


def reg(host_id: str, vcpus: int = 2, mem: int = 2048) -> HostRegistered:
    return HostRegistered(op_id="op", host_id=host_id, hostname=host_id, accel="fake",
                          capacity=HostCapacity(vcpus=vcpus, memory_mib=mem, max_sandboxes=8),
                          agent_version="0")


def build(mem: int = 1024) -> ImageBuildRequested:
    return ImageBuildRequested(op_id="op", org_id="org1", image_id=str(uuid.uuid4()),
                               name="img", context_bytes=10, context_sha256="a" * 64,
                               memory_mib=mem)


@pytest.fixture
def app(tmp_path):
    a = Scheduler(store_env("sqlite", tmp_path, "scheduler"))
    yield a
    a.close()


def published(app: Scheduler) -> list[dict]:
    return [json.loads(n.state)["envelope"] for n in app.recorder.select_notifications(0, 1000)
            if json.loads(n.state).get("envelope")]


def built(req: ImageBuildRequested, host: str) -> ImageBuilt:
    msg = ImageBuilt(op_id="op", org_id=req.org_id, image_id=req.image_id, host_id=host,
                     digest="d" * 64, ref="c-" + "d" * 40, size_bytes=1, took_ms=1)
    return parse_message(msg.to_json(), subject=host_fact_subject(host, req.org_id,
                                                                  req.image_id, "ImageBuilt"))


def test_a_build_is_placed_once_and_holds_capacity_until_it_ends(app):
    app.register(reg("h1"))
    r = build(mem=1536)
    p, new = app.place_build(r, ["h1"])
    assert new and p.host_id == "h1"
    assert app.place_build(r, ["h1"])[1] is False  # redelivery: decided
    types = [e["type"] for e in published(app)]
    assert types == ["ImageBuildScheduled", "BuildImage"]
    assert app.host("h1").allocations[r.image_id]["kind"] == "build"
    with pytest.raises(NoCapacity):  # 1536 + 1024 > 2048 MiB
        app.place_build(build(), ["h1"])
    with pytest.raises(WrongSource):
        app.build_reported(built(r, "h2"))
    app.build_reported(built(r, "h1"))
    assert r.image_id not in app.host("h1").allocations
    assert app.place_build(build(), ["h1"])[1] is True  # room again


def test_a_lost_host_fails_its_builds_and_loses_its_sandboxes(app):
    app.register(reg("h1"))
    r = build()
    app.place_build(r, ["h1"])
    app.mark_lost("h1", 6.0, "op-sweep")
    failed = [e for e in published(app) if e["type"] == "ImageBuildFailed"]
    assert [(e["image_id"], e["failure"]["code"]) for e in failed] == [(r.image_id, "host_lost")]
    assert not [e for e in published(app) if e["type"] == "SandboxLost"]


def test_no_host_fits_a_build_for_too_long(app):
    r = build()
    app.fail_build(r, "no_capacity", "nothing fits")
    app.fail_build(r, "no_capacity", "nothing fits")  # once
    assert [e["type"] for e in published(app)] == ["ImageBuildFailed"]


def test_deletes_go_to_the_building_host_once_or_end_at_once(app):
    app.register(reg("h1"))
    r = build()
    app.place_build(r, ["h1"])
    app.build_reported(built(r, "h1"))
    d = ImageDeleteRequested(op_id="op", org_id="org1", image_id=r.image_id, host_id="h1",
                             digest="d" * 64)
    app.route_image_delete(d)
    app.route_image_delete(d)
    assert [e["type"] for e in published(app)][-1:] == ["DeleteImage"]
    assert [e["type"] for e in published(app)].count("DeleteImage") == 1
    never = ImageDeleteRequested(op_id="op", org_id="org1", image_id=str(uuid.uuid4()))
    app.route_image_delete(never)
    assert published(app)[-1]["type"] == "ImageDeleted"
