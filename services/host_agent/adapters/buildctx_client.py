"""The build context of an image this host builds, fetched from the gateway
in parts on the host's own subject, and checked against the size and hash
the build request named."""
from __future__ import annotations

import base64
import hashlib

from nats.aio.client import Client

from common.rpc import patient_request
from contracts.rpc import BuildContextPart, BuildContextRequest
from contracts.subjects import gateway_buildctx_subject


class ContextMismatch(ValueError):
    pass


class GatewayBuildContext:
    """`conflict` (the gateway has not yet seen the build's placement) and
    `unavailable` are retried for `patience_s`; anything else is final."""

    def __init__(self, nc: Client, host_id: str, timeout_s: float = 10.0,
                 patience_s: float = 30.0) -> None:
        self.nc, self.subject, self.timeout_s = nc, gateway_buildctx_subject(host_id), timeout_s
        self.patience_s = patience_s

    async def __call__(self, image_id: str, org_id: str, op_id: str, size: int,
                       sha256: str) -> bytes:
        buf = bytearray()
        while True:
            ask = BuildContextRequest(image_id=image_id, org_id=org_id, offset=len(buf),
                                      op_id=op_id)
            part = await patient_request(self.nc, self.subject, ask, BuildContextPart,
                                         self.timeout_s, self.patience_s, first_delay_s=0.05,
                                         max_bytes=1 << 20)
            data = base64.b64decode(part.data_b64)
            if part.total != size or len(buf) + len(data) > size:
                raise ContextMismatch("the build context is not the size the request named")
            buf += data
            if len(buf) == size or not data:
                break
        if len(buf) != size or hashlib.sha256(buf).hexdigest() != sha256:
            raise ContextMismatch("the build context does not match the request's hash")
        return bytes(buf)
