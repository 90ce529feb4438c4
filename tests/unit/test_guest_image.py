"""Guest image cache: one builder per name, the other caller reuses its result."""
import threading

import pytest

from services.host_agent.adapters.guest_image import builder

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
