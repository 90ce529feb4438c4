"""OCI image layouts and `docker save` archives: manifest, config and layers
(checked against their digests where the format names them)."""
from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from .unpack import UnpackError

LAYER_TYPES = {"application/vnd.oci.image.layer.v1.tar",
               "application/vnd.oci.image.layer.v1.tar+gzip",
               "application/vnd.docker.image.rootfs.diff.tar",
               "application/vnd.docker.image.rootfs.diff.tar.gzip"}
INDEX_TYPES = {"application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json"}
MAX_JSON = 4 << 20


@dataclass
class OciImage:
    config: dict  # the image config's "config": Env, WorkingDir, User, Cmd, Entrypoint...
    layers: list[str]  # member names in the archive, in order
    digest: str  # of the manifest (OCI) or of the config (docker save)


class OciArchive:
    def __init__(self, path: str) -> None:
        self.tf = tarfile.open(path, mode="r:")
        self.names = {m.name.lstrip("./"): m for m in self.tf.getmembers()
                      if m.isfile() or m.islnk()}

    def close(self) -> None:
        self.tf.close()

    def _open(self, name: str) -> IO[bytes]:
        m = self.names.get(name.lstrip("./"))
        if m is None:
            raise UnpackError(f"{name} is missing from the archive")
        f = self.tf.extractfile(m)
        if f is None:
            raise UnpackError(f"{name} cannot be read")
        return f

    def _json(self, name: str, digest: str | None = None) -> dict | list:
        data = self._open(name).read(MAX_JSON + 1)
        if len(data) > MAX_JSON:
            raise UnpackError(f"{name} is larger than {MAX_JSON} bytes")
        if digest is not None and "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise UnpackError(f"{name} does not match its digest {digest}")
        try:
            return json.loads(data)
        except ValueError:
            raise UnpackError(f"{name} is not JSON") from None

    def image(self) -> OciImage:
        if "index.json" in self.names:
            return self._oci()
        if "manifest.json" in self.names:
            return self._docker()
        raise UnpackError("neither an OCI layout (index.json) nor a docker save archive "
                          "(manifest.json)")

    @staticmethod
    def _blob(digest: str) -> str:
        algo, _, hexd = digest.partition(":")
        if algo != "sha256" or len(hexd) != 64 or any(c not in "0123456789abcdef" for c in hexd):
            raise UnpackError(f"unsupported digest {digest!r}")
        return f"blobs/sha256/{hexd}"

    def _oci(self) -> OciImage:
        desc = _first(self._json("index.json"), "index.json")
        for _ in range(4):  # index -> (index ->) manifest
            if desc.get("mediaType") not in INDEX_TYPES:
                break
            desc = _first(self._json(self._blob(desc["digest"]), desc["digest"]), "an index")
        manifest = self._json(self._blob(desc["digest"]), desc["digest"])
        if not isinstance(manifest, dict) or "layers" not in manifest:
            raise UnpackError("the manifest lists no layers")
        cfg = manifest["config"]
        config = self._json(self._blob(cfg["digest"]), cfg["digest"])
        layers = []
        for layer in manifest["layers"]:
            if layer.get("mediaType") not in LAYER_TYPES:
                raise UnpackError(f"layer type {layer.get('mediaType')} is not supported "
                                  "(tar and tar+gzip are)")
            layers.append(self._blob(layer["digest"]))
        return OciImage(_runtime(config), layers, desc["digest"])

    def _docker(self) -> OciImage:
        items = self._json("manifest.json")
        if not isinstance(items, list) or not items:
            raise UnpackError("manifest.json lists no image")
        first = items[0]
        config = self._json(first["Config"])
        return OciImage(_runtime(config), list(first["Layers"]),
                        "sha256:" + hashlib.sha256(json.dumps(config, sort_keys=True)
                                                   .encode()).hexdigest())

    @contextmanager
    def layer(self, name: str, check: bool) -> Iterator[IO[bytes]]:
        """A layer as an uncompressed stream; its digest is checked as it is read."""
        raw = _Hashing(self._open(name))
        head = raw.peek2()
        stream: Any = gzip.GzipFile(fileobj=raw) if head == b"\x1f\x8b" else raw  # type: ignore[call-overload]
        yield stream
        if check:
            while raw.read(1 << 20):
                pass
            if raw.h.hexdigest() != name.rsplit("/", 1)[-1]:
                raise UnpackError(f"layer {name} does not match its digest")


class _Hashing:
    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.h, self.buf = f, hashlib.sha256(), b""

    def peek2(self) -> bytes:
        self.buf = self.f.read(2)
        self.h.update(self.buf)
        return self.buf

    def read(self, n: int = -1) -> bytes:
        if self.buf:
            b, self.buf = self.buf, b""
            return b if n < 0 or n <= len(b) else b + self.read(n - len(b))
        data = self.f.read(n)
        self.h.update(data)
        return data


def _first(doc: dict | list, what: str) -> dict:
    ms = doc.get("manifests") if isinstance(doc, dict) else None
    if not ms:
        raise UnpackError(f"{what} lists no manifest")
    amd64 = [m for m in ms if (m.get("platform") or {}).get("architecture") in (None, "amd64")]
    if not amd64:
        raise UnpackError("no linux/amd64 image in the archive")
    return amd64[0]


def _runtime(config: dict | list) -> dict:
    c = (config.get("config") or {}) if isinstance(config, dict) else {}
    env = {}
    for kv in c.get("Env") or []:
        k, _, v = str(kv).partition("=")
        env[k] = v
    return {"env": env, "cwd": c.get("WorkingDir") or "/", "user": c.get("User") or "root",
            "cmd": c.get("Cmd"), "entrypoint": c.get("Entrypoint"),
            "labels": c.get("Labels") or {}, "exposed": sorted(c.get("ExposedPorts") or {})}
