"""Corral guest agent wire protocol (shared by host and guest; stdlib only).

Frame: 12-byte prefix `b"CRL" | version:u8 | header_len:u32be | payload_len:u32be`,
then a UTF-8 JSON object header, then raw payload bytes.
See docs/guest-agent-protocol.md.
"""
from __future__ import annotations

import base64
import binascii
import errno
import json
import posixpath
import struct

MAGIC = b"CRL"
VERSION = 1
PORT_NAME = "corral.agent"
PREFIX = struct.Struct(">3sBII")
MAX_HEADER = 64 * 1024
MAX_FILE = 16 * 1024 * 1024
MAX_PAYLOAD = MAX_FILE
MAX_PATH = 4096
MAX_LIST = 10000
MAX_LIST_BYTES = 4 * 1024 * 1024  # a listing's payload (JSON), beyond: truncated
CHUNK = 64 * 1024
MAX_BAD_FRAMES = 100  # frames with an unreadable header before the peer is dropped


class ProtocolError(Exception):
    """The byte stream is not a valid frame sequence."""


class GuestError(Exception):
    """An error answered by the guest agent (or a request refused before sending).

    `code` is stable: an errno name ("ENOENT", "EINVAL", "EFBIG", ...) or one of
    "EPROTO", "EBADOP", "EBUSY".
    """

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class GuestPathError(GuestError, ValueError):
    """A path argument failed validation."""


def encode(header: dict, payload: bytes = b"") -> bytes:
    h = json.dumps(header, separators=(",", ":")).encode()
    if len(h) > MAX_HEADER:
        raise ProtocolError("header too large")
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError("payload too large")
    return PREFIX.pack(MAGIC, VERSION, len(h), len(payload)) + h + bytes(payload)


class Decoder:
    """Incremental frame decoder: feed bytes, get (header, payload) tuples.

    A frame whose header is not a JSON object (bad JSON, nesting too deep,
    wrong type) is skipped and its reason kept in `skipped`: the framing is
    intact, so the stream goes on. A broken frame prefix (magic, version,
    size) raises ProtocolError: nothing after it can be trusted."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.skipped: list[str] = []

    def reset(self) -> None:
        self._buf.clear()

    def feed(self, data: bytes) -> list[tuple[dict, bytes]]:
        self._buf += data
        out: list[tuple[dict, bytes]] = []
        while len(self._buf) >= PREFIX.size:
            magic, ver, hlen, plen = PREFIX.unpack_from(self._buf)
            if magic != MAGIC:
                raise ProtocolError("bad magic")
            if ver != VERSION:
                raise ProtocolError(f"unsupported frame version {ver}")
            if hlen > MAX_HEADER or plen > MAX_PAYLOAD:
                raise ProtocolError("frame too large")
            end = PREFIX.size + hlen + plen
            if len(self._buf) < end:
                break
            raw = bytes(self._buf[PREFIX.size:PREFIX.size + hlen])
            payload = bytes(self._buf[PREFIX.size + hlen:end])
            del self._buf[:end]
            try:
                header = json.loads(raw)
            except (ValueError, RecursionError) as e:
                self.skipped.append(f"bad header json: {e.__class__.__name__}")
                continue
            if not isinstance(header, dict):
                self.skipped.append("header is not an object")
                continue
            out.append((header, payload))
        return out


def check_path(path: object) -> str:
    """Accept only absolute, normalised paths without NUL; return it unchanged.
    A path that is not UTF-8 arrives as a str with surrogate escapes."""
    if not isinstance(path, str) or not path:
        raise GuestPathError("EINVAL", "path must be a non-empty string")
    if "\x00" in path:
        raise GuestPathError("EINVAL", "path contains NUL")
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH:
        raise GuestPathError("ENAMETOOLONG", "path too long")
    if not path.startswith("/"):
        raise GuestPathError("EINVAL", "path must be absolute")
    if path.startswith("//") or posixpath.normpath(path) != path:
        raise GuestPathError("EINVAL", "path must be normalised (no '.', '..', '//', trailing '/')")
    return path


def path_field(path: str | bytes) -> dict[str, str]:
    """A path as a header field: `path` when it is UTF-8, else `path_b64`
    (the raw bytes, so a name that is not UTF-8 round-trips exactly)."""
    raw = path if isinstance(path, bytes) else path.encode("utf-8", "surrogateescape")
    try:
        return {"path": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"path_b64": base64.b64encode(raw).decode()}


def path_arg(h: dict) -> str:
    """The checked path of a request: `path`, or `path_b64` decoded with
    surrogate escapes (what os functions accept for any bytes)."""
    if "path_b64" in h:
        try:
            raw = base64.b64decode(str(h["path_b64"]), validate=True)
        except (binascii.Error, ValueError):
            raise GuestPathError("EINVAL", "path_b64 is not base64") from None
        return check_path(raw.decode("utf-8", "surrogateescape"))
    return check_path(h.get("path"))


def name_fields(name: str) -> dict[str, str]:
    """A directory entry's name: `name` for display (invalid bytes replaced) and,
    when it is not UTF-8, `name_b64` with its exact bytes."""
    raw = name.encode("utf-8", "surrogateescape")
    try:
        return {"name": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"name": raw.decode("utf-8", "replace"),
                "name_b64": base64.b64encode(raw).decode()}


def errno_code(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, "EIO")
