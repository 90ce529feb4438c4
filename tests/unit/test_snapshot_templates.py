"""Template keys, manifest validation and the template store's atomic publish."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from services.host_agent.adapters.qemu.templates import (MANIFEST, MEMORY, OVERLAY, STATE,
                                                         LaunchParams, TemplateInvalid,
                                                         TemplateStore, key_inputs, read_manifest,
                                                         template_key, validate_manifest,
                                                         write_manifest)

pytestmark = pytest.mark.unit


@pytest.fixture
def launch(tmp_path: Path) -> LaunchParams:
    (tmp_path / "vmlinux").write_bytes(b"k" * 10)
    (tmp_path / "initrd").write_bytes(b"i" * 10)
    return LaunchParams("default", "d" * 64, str(tmp_path / "vmlinux"),
                        str(tmp_path / "initrd"), "tcg", 1, 256, "console=ttyS0", True,
                        "02:c0:7e:00:00:01")


ARGV = ["qemu-system-x86_64", "-m", "256", "-device", "virtio-net-device"]


def key(launch: LaunchParams, argv=ARGV) -> str:
    return template_key(key_inputs(launch, argv))


def test_key_is_stable_and_changes_with_every_input(launch: LaunchParams, tmp_path: Path):
    k = key(launch)
    assert k == key(launch) and len(k) == 64
    variants = [replace(launch, image_digest="e" * 64), replace(launch, accel="kvm"),
                replace(launch, vcpus=2), replace(launch, memory_mib=512),
                replace(launch, net=False)]
    keys = {key(v) for v in variants}
    assert k not in keys and len(keys) == len(variants)
    assert key(launch, ARGV + ["-device", "virtio-rng-device"]) != k  # device model
    # A rewritten kernel or initrd (same path) is a different key.
    os.utime(launch.kernel, ns=(1, 1))
    k2 = key(launch)
    assert k2 != k
    (tmp_path / "initrd").write_bytes(b"i" * 11)
    assert key(launch) != k2


def test_key_includes_qemu_version(launch: LaunchParams, monkeypatch):
    from services.host_agent.adapters.qemu import templates
    k = key(launch)
    monkeypatch.setattr(templates, "qemu_version", lambda: "QEMU emulator version 99")
    assert key(launch) != k


def make_build(store: TemplateStore, launch: LaunchParams, k: str, inputs: dict) -> Path:
    b = store.new_build_dir(k)
    (b / STATE).write_bytes(b"s" * 100)
    (b / OVERLAY).write_bytes(b"o" * 10)
    (b / MEMORY).write_bytes(b"m" * 1000)
    write_manifest(b, kind="template", key=k, inputs=inputs, launch=launch)
    return b


def test_manifest_validation(launch: LaunchParams, tmp_path: Path):
    inputs = key_inputs(launch, ARGV)
    k = template_key(inputs)
    store = TemplateStore(tmp_path / "t")
    b = make_build(store, launch, k, inputs)
    m = read_manifest(b)
    assert validate_manifest(m, b, key=k, inputs=inputs) == launch
    with pytest.raises(TemplateInvalid):
        validate_manifest(m, b, key="0" * 64)
    with pytest.raises(TemplateInvalid):
        validate_manifest(m, b, inputs={**inputs, "vcpus": 2})
    for broken in ({**m, "format": 99}, {**m, "kind": "other"}, {**m, "launch": {}},
                   {k2: v for k2, v in m.items() if k2 != "sizes"}, [], None,
                   {**m, "launch": {**m["launch"], "vcpus": 0}}):
        with pytest.raises(TemplateInvalid):
            validate_manifest(broken, b)
    assert set(m["sizes"]) == {STATE, OVERLAY, MEMORY}
    (b / MEMORY).unlink()  # a template's RAM is part of it
    with pytest.raises(TemplateInvalid):
        validate_manifest(m, b)
    (b / MEMORY).write_bytes(b"m" * 1000)
    (b / STATE).write_bytes(b"s" * 99)  # truncated state
    with pytest.raises(TemplateInvalid):
        validate_manifest(m, b)
    (b / STATE).unlink()
    with pytest.raises(TemplateInvalid):
        validate_manifest(m, b)
    (b / MANIFEST).write_text("{not json")
    with pytest.raises(TemplateInvalid):
        read_manifest(b)
    assert issubclass(TemplateInvalid, ValueError)


def test_store_publish_find_prune_and_clean(launch: LaunchParams, tmp_path: Path):
    store = TemplateStore(tmp_path / "t")
    inputs = key_inputs(launch, ARGV)
    k = template_key(inputs)
    cls = store.class_name("default", 1, 256)
    assert store.find(cls, k, inputs) is None
    b = make_build(store, launch, k, inputs)
    assert store.find(cls, k, inputs) is None  # a build dir is never found
    final = store.publish(b, cls, k)
    assert not b.exists() and final == store.dir_for(cls, k)
    t = store.find(cls, k, inputs)
    assert t is not None and t.launch == launch and t.state == final / STATE
    # A newer key for the class prunes the stale one.
    l2 = replace(launch, image_digest="f" * 64)
    i2 = key_inputs(l2, ARGV)
    k2 = template_key(i2)
    store.publish(make_build(store, l2, k2, i2), cls, k2)
    assert [p.name for p in store.prune_class(cls, k2)] == [final.name]
    assert store.find(cls, k, inputs) is None and store.find(cls, k2, i2) is not None
    # Leftover of a killed builder: removed once its lock is free, kept while held.
    left = store.new_build_dir(k)
    lk = store.lock(k)
    assert lk.acquire(blocking=False)
    try:
        assert store.clean_builds() == [] and left.exists()
        other = store.lock(k)
        assert not other.acquire(blocking=False)  # one builder per key
    finally:
        lk.release()
    assert store.clean_builds() == [left] and not left.exists()
    # A half-written manifest never validates.
    d = store.dir_for(cls, k2)
    m = json.loads((d / MANIFEST).read_text())
    (d / MANIFEST).write_text(json.dumps({**m, "sizes": {STATE: 1, OVERLAY: 1, MEMORY: 1}}))
    assert store.find(cls, k2, i2) is None
