"""A build context (a tar the user sent), read without touching the host's
filesystem: capped, no absolute or escaping paths, and what a COPY takes
packed as a tar for the build VM, with its content hash for the layer key."""
from __future__ import annotations

import fnmatch
import hashlib
import io
import posixpath
import tarfile
from dataclasses import dataclass

MAX_MEMBERS = 20000


class ContextError(ValueError):
    pass


@dataclass(frozen=True)
class Entry:
    path: str  # normalised, relative, no leading "./"
    kind: str  # "file" | "dir" | "symlink"
    mode: int
    data: bytes = b""
    target: str = ""


class BuildContext:
    def __init__(self, entries: dict[str, Entry]) -> None:
        self.entries = entries

    @classmethod
    def from_tar(cls, blob: bytes, max_bytes: int) -> BuildContext:
        if len(blob) > max_bytes:
            raise ContextError(f"build context is {len(blob)} bytes; the limit is {max_bytes}")
        entries: dict[str, Entry] = {}
        try:
            with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tf:
                total = 0
                for n, m in enumerate(tf):
                    if n >= MAX_MEMBERS:
                        raise ContextError(f"build context has more than {MAX_MEMBERS} entries")
                    total += m.size if m.isfile() else 0
                    if total > max_bytes * 4:
                        raise ContextError("build context expands beyond its limit")
                    e = _entry(tf, m)
                    if e is not None:
                        entries[e.path] = e
        except tarfile.TarError as e:
            raise ContextError(f"build context is not a readable tar: {e}") from None
        for path in list(entries):  # directories a tar implies without listing them
            parent = posixpath.dirname(path)
            while parent and parent not in entries:
                entries[parent] = Entry(parent, "dir", 0o755)
                parent = posixpath.dirname(parent)
        return cls(entries)

    def text(self, path: str, max_bytes: int = 1 << 20) -> str:
        p = _clean(path)
        e = self.entries.get(p or "")
        if e is None or e.kind != "file":
            raise ContextError(f"{path} is not a file in the build context")
        if len(e.data) > max_bytes:
            raise ContextError(f"{path} is larger than {max_bytes} bytes")
        try:
            return e.data.decode()
        except UnicodeDecodeError:
            raise ContextError(f"{path} is not UTF-8 text") from None

    def select(self, sources: list[str], dest: str) -> list[tuple[str, Entry]]:
        """(path in the image, entry) for a COPY, Docker's rules: a directory's
        contents go under `dest`; files go to `dest/<name>` when `dest` ends with
        "/" or there are several, else to `dest` itself."""
        picked: list[tuple[str, Entry]] = []
        many = len(sources) > 1 or any(_glob(s) for s in sources)
        for src in sources:
            pattern = _clean(src)
            if pattern is None:
                raise ContextError(f"{src} is outside the build context")
            roots = ([p for p in self.entries if fnmatch.fnmatchcase(p, pattern)]
                     if _glob(pattern) else [pattern] if pattern in self.entries or
                     pattern == "" else [])
            if not roots:
                raise ContextError(f"{src}: no such file or directory in the build context")
            for root in sorted(roots):
                picked.extend(self._one(root, dest, many or dest.endswith("/")))
        return picked

    def _one(self, root: str, dest: str, into: bool) -> list[tuple[str, Entry]]:
        e = self.entries.get(root)
        if e is not None and e.kind != "dir":
            target = posixpath.join(dest, posixpath.basename(root)) if into else dest
            return [(posixpath.normpath(target), e)]
        prefix = "" if root == "" else root + "/"
        return [(posixpath.normpath(posixpath.join(dest, p[len(prefix):])), x)
                for p, x in sorted(self.entries.items()) if p.startswith(prefix)]


def _entry(tf: tarfile.TarFile, m: tarfile.TarInfo) -> Entry | None:
    """Files, directories and symlinks; hard links, devices and fifos are not
    part of a context."""
    path = _clean(m.name)
    if path is None:
        raise ContextError(f"build context entry {m.name!r} is outside the context")
    if not path:
        return None
    if m.isfile():
        f = tf.extractfile(m)
        return Entry(path, "file", m.mode & 0o7777, f.read() if f else b"")
    if m.isdir():
        return Entry(path, "dir", m.mode & 0o7777)
    if m.issym():
        return Entry(path, "symlink", 0o777, target=m.linkname)
    return None


def _glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def _clean(name: str) -> str | None:
    """Relative normalised path, "" for the root, None if it escapes."""
    if name.startswith("/"):
        name = name.lstrip("/")
    norm = posixpath.normpath(name) if name else "."
    if norm == "..":
        return None
    if norm.startswith("../"):
        return None
    return "" if norm == "." else norm


def pack(files: list[tuple[str, Entry]], uid: int = 0, gid: int = 0) -> tuple[bytes, str]:
    """The files as a tar with paths from / (for `tar -x -C /` in the build VM),
    owned by uid:gid, and the hash of exactly what it holds."""
    buf = io.BytesIO()
    h = hashlib.sha256()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for target, e in files:
            arc = target.lstrip("/")
            if not arc:
                continue
            ti = tarfile.TarInfo(arc)
            ti.uid, ti.gid, ti.mode, ti.mtime = uid, gid, e.mode, 0
            h.update(f"{arc}\0{e.kind}\0{e.mode}\0{e.target}\0".encode())
            if e.kind == "dir":
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            elif e.kind == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, e.target
                tf.addfile(ti)
            else:
                ti.size = len(e.data)
                h.update(hashlib.sha256(e.data).digest())
                tf.addfile(ti, io.BytesIO(e.data))
    return buf.getvalue(), h.hexdigest()
