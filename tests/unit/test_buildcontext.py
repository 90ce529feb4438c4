"""Build contexts: read in memory, capped, nothing outside the context, and
COPY's selection rules."""
from __future__ import annotations

import io
import tarfile

import pytest

from common.buildcontext import BuildContext, ContextError, pack

pytestmark = pytest.mark.unit


def tar(entries: dict[str, bytes | None], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in entries.items():
            ti = tarfile.TarInfo(name)
            if data is None:
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            else:
                ti.size, ti.mode = len(data), 0o640
                tf.addfile(ti, io.BytesIO(data))
        for name, target in (links or {}).items():
            ti = tarfile.TarInfo(name)
            ti.type, ti.linkname = tarfile.SYMTYPE, target
            tf.addfile(ti)
    return buf.getvalue()


CTX = BuildContext.from_tar(tar({"Dockerfile": b"FROM default\n", "app/a.py": b"a",
                                 "app/pkg/b.py": b"b", "README": b"r", "x.txt": b"x",
                                 "y.txt": b"y"}, {"app/link": "a.py"}), 1 << 20)


def targets(sources: list[str], dest: str) -> list[str]:
    return [t for t, _ in CTX.select(sources, dest)]


def test_copy_rules():
    assert targets(["README"], "/opt/readme") == ["/opt/readme"]
    assert targets(["README"], "/opt/") == ["/opt/README"]
    assert targets(["app"], "/srv") == ["/srv/a.py", "/srv/link", "/srv/pkg", "/srv/pkg/b.py"]
    assert targets(["*.txt"], "/t") == ["/t/x.txt", "/t/y.txt"]  # a glob: a directory
    assert targets(["x.txt", "README"], "/m") == ["/m/x.txt", "/m/README"]
    assert targets(["."], "/all")[0] == "/all/Dockerfile"


def test_pack_keeps_modes_links_and_hashes_content():
    blob, _ = pack(CTX.select(["app"], "/srv"), uid=1000, gid=1000)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        ms = {m.name: m for m in tf.getmembers()}
    assert ms["srv/a.py"].mode == 0o640 and ms["srv/a.py"].uid == 1000
    assert ms["srv/link"].issym() and ms["srv/link"].linkname == "a.py"
    other = BuildContext.from_tar(tar({"app/a.py": b"A", "app/pkg/b.py": b"b"},
                                      {"app/link": "a.py"}), 1 << 20)
    assert pack(other.select(["app"], "/srv"))[1] != pack(CTX.select(["app"], "/srv"))[1]
    assert pack(CTX.select(["app"], "/srv"))[1] == pack(CTX.select(["app"], "/srv"))[1]


@pytest.mark.parametrize("blob,cap,needle", [
    (tar({"../evil": b"x"}), 1 << 20, "outside the context"),
    (b"garbage" * 100, 1 << 20, "not a readable tar"),
    (tar({"big": b"x" * 5000}), 4096, "the limit is 4096"),
])
def test_bad_contexts(blob, cap, needle):
    with pytest.raises(ContextError, match=needle):
        BuildContext.from_tar(blob, cap)


def test_absolute_names_stay_inside_and_missing_sources_are_named():
    ctx = BuildContext.from_tar(tar({"/abs/file": b"1"}), 1 << 20)
    assert "abs/file" in ctx.entries
    with pytest.raises(ContextError, match="nope: no such file"):
        CTX.select(["nope"], "/x")
    with pytest.raises(ContextError, match="not a file"):
        CTX.text("app")
