"""Guest image cache: one builder per name, the other caller reuses its result."""
import json
import threading

import pytest

from services.host_agent.adapters.guest_image import builder, kernel

pytestmark = pytest.mark.unit


def test_concurrent_ensure_image_builds_once(tmp_path, monkeypatch):
    monkeypatch.setenv("CORRAL_IMAGE_DIR", str(tmp_path))
    monkeypatch.setattr(builder, "image_inputs", lambda name: {"name": name, "x": 1})
    entered, release = threading.Event(), threading.Event()
    builds = []

    def fake_build(final, name, inputs, digest):
        builds.append(name)
        entered.set()
        assert release.wait(10)
        final.mkdir()
        for f in ("vmlinux", "initrd.cpio", "rootfs.ext4"):
            (final / f).write_bytes(b"x")
        (final / "manifest.json").write_text("{}")

    monkeypatch.setattr(builder, "_build", fake_build)
    results = []
    t1 = threading.Thread(target=lambda: results.append(builder.ensure_image("default")))
    t1.start()
    assert entered.wait(10)
    t2 = threading.Thread(target=lambda: results.append(builder.ensure_image("default")))
    t2.start()
    release.set()
    t1.join(10)
    t2.join(10)
    assert builds == ["default"]
    assert len(results) == 2 and results[0] == results[1]
    assert results[0].rootfs.read_bytes() == b"x"
    assert builder.find_image("default") == results[0]


@pytest.mark.parametrize("name", ["", "Default", "a/b", "-x", "x" * 64])
def test_image_name_is_validated(name):
    with pytest.raises(ValueError):
        builder.ensure_image(name)


def _built(root, name: str, digest: str, code: dict, built_at: str):
    d = root / f"{name}-{digest[:16]}"
    d.mkdir()
    manifest = {**code, "kernel_package": "linux-image-6.1.0-99-cloud-amd64",
                "busybox": "1:1.35.0-4", "digest": digest, "built_at": built_at}
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def test_without_apt_state_the_newest_image_built_from_this_code_is_used(tmp_path, monkeypatch):
    """A container has no apt lists: the kernel cannot be resolved, so the
    image's full digest cannot be computed; an image another host built from
    the same code is found instead, and none at all is a clear error."""
    monkeypatch.setenv("CORRAL_IMAGE_DIR", str(tmp_path))
    builder.image_inputs.cache_clear()

    def no_apt():
        raise kernel.ImageBuildError("cannot resolve linux-image-cloud-amd64")
    monkeypatch.setattr(kernel, "resolve_kernel_package", no_apt)
    monkeypatch.setattr(builder, "_build", lambda *a: pytest.fail("no building without apt"))
    code = builder.code_inputs("default")
    with pytest.raises(kernel.ImageBuildError, match="holds no 'default' image built"):
        builder.ensure_image("default")

    other = {**code, "sources": {**code["sources"], "agent.py": "0" * 64}}  # older code
    _built(tmp_path, "default", "a" * 64, other, "2026-12-03T00:00:00Z")
    assert builder.find_image("default") is None
    _built(tmp_path, "default", "b" * 64, code, "2026-12-01T00:00:00Z")
    newest = _built(tmp_path, "default", "c" * 64, code, "2026-12-02T00:00:00Z")
    got = builder.ensure_image("default")
    assert got.rootfs.parent == newest and got.digest == "c" * 64
    assert builder.find_image("default") == got
    builder.image_inputs.cache_clear()
