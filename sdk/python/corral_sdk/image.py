"""Image: an org's custom sandbox image, built from a Dockerfile context or
imported from an OCI archive (synchronous client)."""
from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import _args as chk
from . import _http as h
from .config import Config
from .errors import CorralError, StreamError
from .sse import SSEDecoder

LogCallback = Callable[[str], Any]
OCI = "application/vnd.oci.image.layout.v1+tar"


class ImageBuildError(CorralError):
    """The build failed; `failure` says why (and `line`, the Dockerfile line)."""

    def __init__(self, info: dict) -> None:
        self.info = info
        self.failure = info.get("failure") or {}
        self.line = self.failure.get("line")
        where = f" (line {self.line})" if self.line else ""
        super().__init__(f"image {info.get('name')} failed{where}: "
                         f"{self.failure.get('message', 'unknown')}")


def pack_context(path: str | os.PathLike[str]) -> bytes:
    """A directory as a build context tar (paths relative to it; symlinks kept
    as links, never followed out of it)."""
    root = Path(path)
    if not root.is_dir():
        raise CorralError(f"{root} is not a directory")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root).as_posix()
            if rel.split("/")[0] in (".git",):
                continue
            tf.add(p, rel, recursive=False)
    return buf.getvalue()


class Image:
    def __init__(self, driver: h.SyncDriver, info: dict) -> None:
        self._http, self.info = driver, info

    id = property(lambda self: self.info["id"])
    name = property(lambda self: self.info.get("name"))
    state = property(lambda self: self.info.get("state"))

    def __repr__(self) -> str:
        return f"Image(id={self.id!r}, name={self.name!r}, state={self.state!r})"

    @staticmethod
    def _driver(api_url: str | None, api_key: str | None) -> h.SyncDriver:
        return h.SyncDriver(Config.resolve(api_url, api_key))

    @classmethod
    def build(cls, context: str | os.PathLike[str] | bytes, name: str, *,
              dockerfile: str = "Dockerfile", build_args: dict[str, str] | None = None,
              on_log: LogCallback | None = None, wait: bool = True, timeout: float = 1800,
              api_url: str | None = None, api_key: str | None = None) -> Image:
        """Build `name` from a directory (or a context tar's bytes) holding the
        Dockerfile. With `wait`, returns once ready (ImageBuildError if it
        failed); `on_log` gets the build's output as it comes."""
        chk.check_name("name", name)
        chk.check_map("build_args", build_args)
        chk.check_seconds("timeout", timeout)
        blob = context if isinstance(context, bytes) else pack_context(context)
        params: dict[str, Any] = {"name": name, "dockerfile": dockerfile}
        if build_args:
            params["build_arg"] = [f"{k}={v}" for k, v in build_args.items()]
        return cls._submit(blob, "application/x-tar", params, on_log, wait, timeout,
                           api_url, api_key)

    @classmethod
    def import_archive(cls, archive: str | os.PathLike[str], name: str, *,
                       on_log: LogCallback | None = None, wait: bool = True,
                       timeout: float = 1800, api_url: str | None = None,
                       api_key: str | None = None) -> Image:
        """Import an OCI image layout tar or a `docker save` archive as `name`."""
        chk.check_name("name", name)
        chk.check_seconds("timeout", timeout)
        blob = Path(archive).read_bytes()
        return cls._submit(blob, OCI, {"name": name}, on_log, wait, timeout, api_url, api_key)

    @classmethod
    def _submit(cls, blob: bytes, kind: str, params: dict[str, Any],
                on_log: LogCallback | None, wait: bool, timeout: float,
                api_url: str | None, api_key: str | None) -> Image:
        d = cls._driver(api_url, api_key)
        call = h.Call("POST", "/v1/images", params=params, content=blob,
                      headers={"Content-Type": kind}, timeout=120)
        img = cls(d, h.parse_json(d.run(h.request(call))))
        if on_log is not None:
            d.run(_follow_logs(img.id, on_log, timeout))
        if wait:
            img.wait(timeout)
        return img

    def wait(self, timeout: float = 1800) -> Image:
        """Until the build ends; ImageBuildError if it failed."""
        def op() -> h.Op:
            waited = 0.0
            while True:
                resp = yield from h.request(h.Call("GET", f"/v1/images/{self.id}"),
                                            self._http.retry)
                self.info = h.parse_json(resp)
                if self.state != "building" or waited >= timeout:
                    return self
                yield h.Sleep(1.0)
                waited += 1.0
        self._http.run(op())
        if self.state == "failed":
            raise ImageBuildError(self.info)
        return self

    @classmethod
    def get(cls, image_id: str, api_url: str | None = None,
            api_key: str | None = None) -> Image:
        d = cls._driver(api_url, api_key)
        return cls(d, h.parse_json(d.run(h.request(h.Call("GET", f"/v1/images/{image_id}"),
                                                   d.retry))))

    @classmethod
    def list(cls, api_url: str | None = None, api_key: str | None = None) -> list[Image]:
        d = cls._driver(api_url, api_key)
        doc = h.parse_json(d.run(h.request(h.Call("GET", "/v1/images"), d.retry)))
        return [cls(d, i) for i in doc.get("items", [])]

    def delete(self) -> None:
        self.info = h.parse_json(self._http.run(h.request(
            h.Call("DELETE", f"/v1/images/{self.id}"), self._http.retry)))


def _follow_logs(image_id: str, on_log: LogCallback, timeout: float) -> h.Op:
    call = h.Call("GET", f"/v1/images/{image_id}/logs", timeout=timeout, stream=True,
                  headers={"Accept": "text/event-stream"})
    resp = yield from h.request(call)
    dec = SSEDecoder()
    while True:
        chunk = yield h.Read(resp)
        for ev in (dec.feed(chunk) if chunk else dec.close()):
            if ev.event == "log":
                yield h.Emit(on_log, json.loads(ev.data).get("text", ""))
            elif ev.event in ("ImageBuilt", "ImageBuildFailed"):
                return ev.event
            elif ev.event == "error":
                raise StreamError(json.loads(ev.data).get("detail", "log stream failed"))
        if not chunk:
            raise StreamError("the build log ended without the build's end",
                              op_id=resp.headers.get("x-op-id"))
