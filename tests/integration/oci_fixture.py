"""Writes small OCI image layouts for the import tests: a busybox root (the
host's static busybox), a user `app` with a home, and a config; a second
layer exercises whiteouts (a file removed, a directory made opaque) and a
symlink that points out of the root (which must stay inside it)."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

BUSYBOX = "/bin/busybox"
APPLETS = ["sh", "echo", "id", "pwd", "ls", "cat", "env", "sync", "mkdir", "tar", "true"]


def _tar(entries: list[tuple[str, str, bytes | str, int]]) -> bytes:
    """(name, kind: f|d|l, data or link target, mode)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, kind, data, mode in entries:
            ti = tarfile.TarInfo(name)
            ti.mode = mode
            if kind == "d":
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            elif kind == "l":
                ti.type, ti.linkname = tarfile.SYMTYPE, str(data)
                tf.addfile(ti)
            else:
                raw = data if isinstance(data, bytes) else data.encode()
                ti.size = len(raw)
                tf.addfile(ti, io.BytesIO(raw))
    return buf.getvalue()


def layers() -> list[bytes]:
    busybox = Path(BUSYBOX).read_bytes()
    base = [("bin", "d", b"", 0o755), ("bin/busybox", "f", busybox, 0o755),
            *((f"bin/{a}", "l", "busybox", 0o777) for a in APPLETS),
            ("etc", "d", b"", 0o755),
            ("etc/passwd", "f", "root:x:0:0:root:/root:/bin/sh\n"
                                "app:x:1000:1000:app:/home/app:/bin/sh\n", 0o644),
            ("etc/group", "f", "root:x:0:\napp:x:1000:\n", 0o644),
            ("home", "d", b"", 0o755), ("home/app", "d", b"", 0o755),
            ("junk", "f", "to be removed\n", 0o644),
            ("cache", "d", b"", 0o755), ("cache/old", "f", "lower layer\n", 0o644)]
    upper = [("home/app/hello.txt", "f", "hello from the image\n", 0o644),
             (".wh.junk", "f", b"", 0o644),
             ("cache/.wh..wh..opq", "f", b"", 0o644), ("cache/new", "f", "upper\n", 0o644),
             ("escape", "l", "/etc", 0o777), ("escape/planted", "f", "inside\n", 0o644)]
    return [_tar(base), _tar(upper)]


def write_oci(path: Path, config: dict, gzip_layers: bool = True) -> Path:
    """An OCI image layout, as a tar, at `path`."""
    root = path.with_suffix(".d")
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> str:
        d = hashlib.sha256(data).hexdigest()
        (blobs / d).write_bytes(data)
        return f"sha256:{d}"
    descs = []
    diff_ids = []
    for layer in layers():
        diff_ids.append("sha256:" + hashlib.sha256(layer).hexdigest())
        data = gzip.compress(layer) if gzip_layers else layer
        mt = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gzip_layers else "")
        descs.append({"mediaType": mt, "digest": blob(data), "size": len(data)})
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": config,
                      "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = json.dumps({"schemaVersion": 2,
                           "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": blob(cfg), "size": len(cfg)},
                           "layers": descs}).encode()
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": blob(manifest),
         "size": len(manifest), "platform": {"architecture": "amd64", "os": "linux"}}]}
    (root / "index.json").write_text(json.dumps(index))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    with tarfile.open(path, "w") as tf:
        for p in sorted(root.rglob("*")):
            tf.add(p, p.relative_to(root).as_posix(), recursive=False)
    shutil.rmtree(root)
    return path
