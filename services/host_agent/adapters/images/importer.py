"""Import an OCI layout or `docker save` archive as an image: layers applied in
order (whiteouts honoured) in a scratch directory, the agent and its own
Python injected, the result made an ext4 file and published by digest."""
from __future__ import annotations

import asyncio
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from services.host_agent.adapters.guest_image import ImagePaths
from services.host_agent.adapters.guest_image.rootfs import make_ext4

from .build import LAYOUT, BuildError, BuildResult
from .oci import OciArchive
from .store import ImageStore, content_key, image_ref
from .unpack import Unpacker, UnpackError

# the guest's mount points and the dirs the agent expects
SKELETON = ["dev", "proc", "sys", "run", "tmp", "root", "etc", "opt/corral"]


def _digest_of(path: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def _unpack(archive: Path, runtime: Path, root: Path, max_bytes: int) -> tuple[str, dict]:
    arc = OciArchive(str(archive))
    try:
        img = arc.image()
        un = Unpacker(str(root), max_bytes)
        try:
            for name in img.layers:
                with arc.layer(name, check=name.startswith("blobs/")) as stream:
                    un.apply(stream)
        finally:
            un.close()
    finally:
        arc.close()
    for d in SKELETON:
        p = root / d
        if p.is_symlink() or (p.exists() and not p.is_dir()):
            p.unlink()
        p.mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    shutil.rmtree(root / "opt/corral", ignore_errors=True)  # ours alone, never the image's
    with tarfile.open(runtime) as tf:
        tf.extractall(root, filter="fully_trusted")  # built by us (the built-in image)
    return img.digest, img.config


async def import_archive(store: ImageStore, base: ImagePaths, archive: Path, *,
                         max_bytes: int = 8 << 30, scope: str = "") -> BuildResult:
    """`base`: the built-in image whose runtime (agent + Python) is injected;
    `scope` (the org): imports are shared within it only."""
    if base.runtime is None or not base.runtime.is_file():
        raise BuildError("the built-in image has no runtime to inject; rebuild it")
    work = Path(tempfile.mkdtemp(prefix=".import-", dir=store.root / "tmp"))
    try:
        root = work / "root"
        root.mkdir(mode=0o755)
        try:
            oci_digest, config = await asyncio.to_thread(_unpack, archive, base.runtime, root,
                                                         max_bytes)
        except (UnpackError, KeyError, TypeError, OSError) as e:
            raise BuildError(f"cannot import the archive: {e}") from None
        config = {**config, "base": f"oci:{oci_digest}"}
        runtime_digest = await asyncio.to_thread(_digest_of, base.runtime)
        key = content_key(LAYOUT, "oci", scope, oci_digest, runtime_digest)
        digest = content_key(LAYOUT, key, config)
        async with store.lock(key):
            if not store.has_layer(key):
                out = store.tmp_file()
                await asyncio.to_thread(make_ext4, root, out, 512)
                store.publish_layer(key, out, {"oci": oci_digest})
        async with store.lock(digest):
            store.publish_image(digest, store.layer_file(key), config)
        cfg = store.config(digest)
        return BuildResult(digest, image_ref(digest), cfg["size_bytes"], cfg)
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
