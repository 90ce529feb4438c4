"""The host's image store: layers and images published whole and shared,
refs resolved, garbage collected within a budget without touching what an
image or a VM still uses."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from services.host_agent.adapters.guest_image import ImagePaths
from services.host_agent.adapters.images import ImageStore, image_ref, layer_ref
from services.host_agent.adapters.images.store import content_key

pytestmark = pytest.mark.unit


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    def builtin(name: str) -> ImagePaths:
        if name != "default":
            raise KeyError(name)
        return ImagePaths(tmp_path / "vmlinux", tmp_path / "initrd", tmp_path / "root.ext4", "b")
    return ImageStore(tmp_path / "store", builtin)


def fs(store: ImageStore, size: int) -> Path:
    p = store.tmp_file()
    p.write_bytes(os.urandom(size))
    return p


def test_layers_and_images_publish_whole_and_resolve(store: ImageStore):
    key = content_key("a", 1)
    first = store.publish_layer(key, fs(store, 4096), {"line": 2})
    again = store.publish_layer(key, fs(store, 4096), {"line": 2})  # first one wins
    assert first == again and first.stat().st_mode & 0o777 == 0o444
    assert list((store.root / "tmp").iterdir()) == []
    digest = content_key("img", key)
    d = store.publish_image(digest, first, {"env": {"A": "1"}, "cwd": "/w"})
    assert store.publish_image(digest, first, {"env": {}}) == d  # shared, not replaced
    assert (d / "rootfs.ext4").stat().st_ino == first.stat().st_ino
    img = store.resolve(image_ref(digest))
    assert img.rootfs == d / "rootfs.ext4" and img.config["env"] == {"A": "1"}
    assert img.kernel.name == "vmlinux"  # the built-in's kernel and initrd
    assert img.exec_defaults({"B": "2"}) == {"env": {"A": "1", "B": "2"},
                                             "defaults": {"cwd": "/w"}}
    assert store.resolve(layer_ref(key)).rootfs == first
    assert store.resolve("default").digest == "b"
    for bad in ("c-" + "0" * 40, "l-" + "0" * 40, "nope"):
        with pytest.raises(KeyError):
            store.resolve(bad)


def test_gc_keeps_what_images_and_vms_use_and_trims_to_budget(store: ImageStore):
    keys = [content_key("layer", i) for i in range(4)]
    for i, k in enumerate(keys):
        p = store.publish_layer(k, fs(store, 64 << 10), {})
        os.utime(p, (1000 + i, 1000 + i))  # oldest first
    kept_digest = content_key("img", keys[0])
    store.publish_image(kept_digest, store.layer_file(keys[0]), {})
    gone_digest = content_key("img", keys[3])
    store.publish_image(gone_digest, store.layer_file(keys[3]), {})
    removed = store.gc({kept_digest}, {keys[1]}, layer_budget_bytes=0)
    assert f"image {gone_digest[:16]}" in removed
    assert store.has_layer(keys[0]) and store.has_layer(keys[1])  # an image's; a build's
    assert not store.has_layer(keys[2]) and not store.has_layer(keys[3])
    assert store.has_image(kept_digest) and not store.has_image(gone_digest)


async def test_the_store_lock_admits_one_builder_per_key(store: ImageStore):
    inside, most = 0, 0

    async def one() -> None:
        nonlocal inside, most
        async with store.lock("k" * 64):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.05)
            inside -= 1
    await asyncio.gather(*(one() for _ in range(4)))
    assert most == 1
