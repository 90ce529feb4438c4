"""Apply image layers (tar streams) to a directory without ever following a
link the layers made: every path is walked one component at a time with
O_NOFOLLOW from a directory fd, so a layer's symlink `etc -> /etc` cannot
make a later entry write outside the root. OCI whiteouts (`.wh.<name>`,
`.wh..wh..opq`) delete what lower layers put there. Devices and fifos are
skipped (the guest's /dev is a devtmpfs). Run as root (ownership is kept)
on a directory no one else writes."""
from __future__ import annotations

import os
import posixpath
import stat
import tarfile
from typing import IO

WH = ".wh."
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
OPAQUE = ".wh..wh..opq"


class UnpackError(ValueError):
    pass


class Unpacker:
    def __init__(self, root: str, max_bytes: int, max_entries: int = 500_000) -> None:
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self.bytes = self.entries = 0

    def close(self) -> None:
        os.close(self.root_fd)

    @staticmethod
    def _parts(name: str) -> list[str]:
        """A name cleaned as if it started at the root ("a/../../x" is "x"), as
        Docker does: ".." never climbs above the root."""
        norm = posixpath.normpath("/" + name).lstrip("/")
        return [p for p in norm.split("/") if p not in ("", ".")]

    def _dir(self, parts: list[str], create: bool) -> int:
        """An fd of directory `parts` (made if `create`). Symlinks on the way are
        resolved inside the root, as a chroot would (absolute targets start at
        the root, ".." stops there); nothing is ever opened through a link."""
        todo, links = list(parts), 0
        cur: list[str] = []
        fd = os.dup(self.root_fd)
        try:
            while todo:
                p = todo.pop(0)
                if p in ("", "."):
                    continue
                if p == "..":
                    cur = cur[:-1]
                    os.close(fd)
                    fd = self._walk(cur)
                    continue
                try:
                    nfd = os.open(p, DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(p, 0o755, dir_fd=fd)
                    nfd = os.open(p, DIR_FLAGS, dir_fd=fd)
                except OSError:
                    st = os.stat(p, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode):
                        links += 1
                        if links > 40:
                            raise UnpackError("too many symlinks under "
                                              f"{'/'.join(parts)}") from None
                        target = os.readlink(p, dir_fd=fd)
                        todo = target.split("/") + todo
                        if target.startswith("/"):
                            cur = []
                            os.close(fd)
                            fd = os.dup(self.root_fd)
                        continue
                    if not create:
                        raise
                    _remove(fd, p)  # a file where a directory is needed: replaced
                    os.mkdir(p, 0o755, dir_fd=fd)
                    nfd = os.open(p, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd, cur = nfd, [*cur, p]
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _walk(self, parts: list[str]) -> int:
        """Re-open a path already resolved (real directories only)."""
        fd = os.dup(self.root_fd)
        for p in parts:
            nfd = os.open(p, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd

    def apply(self, stream: IO[bytes]) -> None:
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as tf:
                for m in tf:
                    self.entries += 1
                    if self.entries > self.max_entries:
                        raise UnpackError(f"more than {self.max_entries} entries in the image")
                    self._member(tf, m)
        except tarfile.TarError as e:
            raise UnpackError(f"a layer is not a readable tar: {e}") from None

    def _member(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = self._parts(m.name)
        if not parts:
            return
        *parent, leaf = parts
        if leaf == OPAQUE:
            d = self._dir(parent, True)
            try:
                for name in os.listdir(d):
                    _remove(d, name)
            finally:
                os.close(d)
            return
        if leaf.startswith(WH):
            try:
                d = self._dir(parent, False)
            except OSError:
                return
            try:
                _remove(d, leaf[len(WH):])
            finally:
                os.close(d)
            return
        d = self._dir(parent, True)
        try:
            self._write(tf, m, d, leaf)
        finally:
            os.close(d)

    def _write(self, tf: tarfile.TarFile, m: tarfile.TarInfo, d: int, leaf: str) -> None:
        mode = m.mode & 0o7777
        if m.isdir():
            try:
                fd = os.open(leaf, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=d)
            except OSError:
                _remove(d, leaf)
                os.mkdir(leaf, 0o700, dir_fd=d)
                fd = os.open(leaf, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=d)
            try:
                os.fchown(fd, m.uid, m.gid)
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
            return
        _remove(d, leaf)
        if m.isreg():
            self.bytes += m.size
            if self.bytes > self.max_bytes:
                raise UnpackError(f"the image is larger than {self.max_bytes} bytes")
            src = tf.extractfile(m)
            fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                         dir_fd=d)
            try:
                while src is not None and (b := src.read(1 << 20)):
                    os.write(fd, b)
                os.fchown(fd, m.uid, m.gid)
                os.fchmod(fd, mode)  # after chown, which clears setuid bits
            finally:
                os.close(fd)
        elif m.issym():
            os.symlink(m.linkname, leaf, dir_fd=d)
            os.chown(leaf, m.uid, m.gid, dir_fd=d, follow_symlinks=False)
        elif m.islnk():
            tparts = self._parts(m.linkname)
            if not tparts:
                raise UnpackError(f"hard link {m.name!r} to the root")
            td = self._dir(tparts[:-1], False)
            try:
                st = os.stat(tparts[-1], dir_fd=td, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    raise UnpackError(f"hard link {m.name!r} to a non-file")
                os.link(tparts[-1], leaf, src_dir_fd=td, dst_dir_fd=d, follow_symlinks=False)
            finally:
                os.close(td)
        # character/block devices and fifos: skipped


def _remove(d: int, name: str) -> None:
    """Remove `name` in directory fd `d`, a tree recursively, never following links."""
    try:
        st = os.stat(name, dir_fd=d, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=d)
        try:
            for child in os.listdir(fd):
                _remove(fd, child)
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=d)
    else:
        os.unlink(name, dir_fd=d)
