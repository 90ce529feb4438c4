"""Image layers applied without following a link out of the root: hostile
tars (links to the host, `..`, hard links out) stay inside, whiteouts work,
and a docker save archive reads like an OCI layout."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from services.host_agent.adapters.images.oci import OciArchive
from services.host_agent.adapters.images.unpack import Unpacker, UnpackError

pytestmark = pytest.mark.unit
UID, GID = os.getuid(), os.getgid()


def layer(*entries: tuple) -> bytes:
    """(name, "f"|"d"|"l"|"h", data or target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, kind, data in entries:
            ti = tarfile.TarInfo(name)
            ti.uid, ti.gid, ti.mode = UID, GID, 0o644
            if kind == "d":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            elif kind == "l":
                ti.type, ti.linkname = tarfile.SYMTYPE, data
                tf.addfile(ti)
            elif kind == "h":
                ti.type, ti.linkname = tarfile.LNKTYPE, data
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def apply(root: Path, *layers: bytes, cap: int = 1 << 20) -> None:
    u = Unpacker(str(root), cap)
    try:
        for lay in layers:
            u.apply(io.BytesIO(lay))
    finally:
        u.close()


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    return root, outside


def test_links_out_of_the_root_resolve_inside_it(dirs):
    root, outside = dirs
    apply(root, layer(("evil", "l", str(outside)), ("evil/planted", "f", b"x"),
                      ("up", "l", "../../.."), ("up/tmp/also", "f", b"y"),
                      ("deep", "d", b""), ("deep/rel", "l", "../../../../outside"),
                      ("deep/rel/third", "f", b"z")))
    assert list(outside.iterdir()) == []
    assert (root / str(outside).lstrip("/") / "planted").read_bytes() == b"x"
    assert (root / "tmp/also").read_bytes() == b"y"
    assert (root / "outside/third").read_bytes() == b"z"
    assert os.readlink(root / "evil") == str(outside)  # the link itself is kept


def test_a_file_over_a_link_replaces_the_link(dirs):
    root, outside = dirs
    (outside / "target").write_bytes(b"host")
    apply(root, layer(("f", "l", str(outside / "target"))), layer(("f", "f", b"image")))
    assert (outside / "target").read_bytes() == b"host"
    assert (root / "f").read_bytes() == b"image" and not (root / "f").is_symlink()


def test_hard_links_stay_inside(dirs):
    root, outside = dirs
    (outside / "x").write_bytes(b"host secret")
    with pytest.raises((UnpackError, OSError)):  # "../outside/x" is <root>/outside/x: absent
        apply(root, layer(("h", "h", "../outside/x")))
    assert os.stat(outside / "x").st_nlink == 1
    apply(root, layer(("a", "f", b"1"), ("b", "h", "a")))
    assert os.stat(root / "a").st_ino == os.stat(root / "b").st_ino


def test_dotdot_names_never_climb_above_the_root(dirs):
    root, outside = dirs
    apply(root, layer(("a/../../x", "f", b"1"), ("../../outside/y", "f", b"2")))
    assert (root / "x").read_bytes() == b"1" and (root / "outside/y").read_bytes() == b"2"
    assert list(outside.iterdir()) == []


def test_whiteouts_and_opaque_dirs(dirs):
    root, _ = dirs
    apply(root, layer(("keep", "f", b"k"), ("gone", "f", b"g"), ("d", "d", b""),
                      ("d/old", "f", b"o"), ("t", "d", b""), ("t/x", "f", b"x")),
          layer((".wh.gone", "f", b""), ("d/.wh..wh..opq", "f", b""), ("d/new", "f", b"n"),
                (".wh.t", "f", b""), (".wh.never-there", "f", b"")))
    assert sorted(p.name for p in root.iterdir()) == ["d", "keep"]
    assert sorted(p.name for p in (root / "d").iterdir()) == ["new"]


def test_size_cap(dirs):
    root, _ = dirs
    with pytest.raises(UnpackError, match="larger than"):
        apply(root, layer(("big", "f", b"x" * 2000)), cap=1000)


def test_docker_save_archive(tmp_path: Path):
    lay = layer(("bin", "d", b""), ("bin/hello", "f", b"#!/bin/sh\necho hi\n"))
    config = {"config": {"Env": ["PATH=/bin", "X=1"], "WorkingDir": "/w", "User": "1000",
                         "Cmd": ["hello"]}}
    arc = tmp_path / "saved.tar"
    with tarfile.open(arc, "w") as tf:
        for name, data in {"abc/layer.tar": lay, "cfg.json": json.dumps(config).encode(),
                           "manifest.json": json.dumps([{"Config": "cfg.json",
                                                         "Layers": ["abc/layer.tar"]}]).encode()
                           }.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    a = OciArchive(str(arc))
    img = a.image()
    assert img.config["env"] == {"PATH": "/bin", "X": "1"} and img.config["cwd"] == "/w"
    assert img.config["user"] == "1000" and img.config["cmd"] == ["hello"]
    root = tmp_path / "r"
    root.mkdir()
    u = Unpacker(str(root), 1 << 20)
    for name in img.layers:
        with a.layer(name, check=False) as s:
            u.apply(s)
    u.close()
    a.close()
    assert (root / "bin/hello").read_bytes().startswith(b"#!/bin/sh")


def test_an_oci_blob_that_does_not_match_its_digest_is_refused(tmp_path: Path):
    arc = tmp_path / "oci.tar"
    bad = "sha256:" + "0" * 64
    with tarfile.open(arc, "w") as tf:
        for name, data in {"index.json": json.dumps({"manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": bad}]}
                ).encode(), f"blobs/sha256/{'0' * 64}": b"{}"}.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    with pytest.raises(UnpackError, match="does not match its digest"):
        OciArchive(str(arc)).image()
