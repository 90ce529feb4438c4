"""Ports: a URL through the gateway to a port served inside a sandbox (HTTP
and WebSocket). The owner asks for a port's URL; it carries a token (a MAC
of org, sandbox and port), which is all a visitor needs and all that opens
it. The bytes travel as a `connect` tunnel to the guest's own loopback
(docs/api-ports.md)."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import h11
from fastapi import APIRouter, Path, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from wsproto import ConnectionType, WSConnection
from wsproto import events as ws

from .deps import Ctx, OpId, Org, context
from .io_routes import SandboxId
from .middleware import new_op_id
from .pair import both
from .problems import RPC_STATUS, problem
from .tunnel import Tunnel, TunnelError

log = logging.getLogger("corral.gateway.ports")
port_router = APIRouter(tags=["ports"])
Port = Annotated[int, Path(ge=1, le=65535)]
Token = Annotated[str, Path(min_length=8, max_length=200)]
HOP = {b"host", b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"te",
       b"trailer", b"proxy-authorization", b"proxy-connection", b"content-length",
       b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions",
       b"sec-websocket-protocol"}
HEAD_TIMEOUT_S = 60.0  # for the response's status and headers
MAX_WS_MESSAGE = 16 << 20  # a port's WebSocket message, reassembled here
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class PortUrl(BaseModel):
    port: int
    url: str
    token: str


def _subject(sandbox_id: str, port: int) -> str:
    return f"{sandbox_id}:port:{port}"


@port_router.get("/v1/sandboxes/{sandbox_id}/ports/{port}/url", response_model=PortUrl)
async def port_url(request: Request, ctx: Ctx, org: Org, sandbox_id: SandboxId,
                   port: Port) -> PortUrl:
    """Exposes `port`: the URL (with its token) that reaches it while the
    sandbox runs. Anyone with the URL reaches that port of that sandbox, and
    nothing else."""
    await ctx.sandboxes.find(sandbox_id, org.org_id)  # 404 unless the caller's
    token = ctx.sandboxes.access_token(org.org_id, _subject(sandbox_id, port))
    base = str(request.base_url).rstrip("/")
    return PortUrl(port=port, token=token, url=f"{base}/ports/{sandbox_id}/{port}/{token}/")


def _target(path: str, query: str) -> str:
    return "/" + path + (f"?{query}" if query else "")


def _credential(k: bytes, v: bytes) -> bool:
    """Corral's own credentials, which a guest must never see (a client that
    sends its API key everywhere, say): API keys and envd access tokens."""
    k = k.lower()
    return (k in (b"x-api-key", b"x-access-token")
            or (k == b"authorization" and v.split(b" ")[-1].startswith(b"crl_")))


def _headers(raw: list[tuple[bytes, bytes]], port: int, prefix: str,
             client: str) -> list[tuple[bytes, bytes]]:
    kept = [(k, v) for k, v in raw if k.lower() not in HOP and not k.lower().startswith(
        b"x-forwarded-") and not _credential(k, v)]
    return [(b"host", f"127.0.0.1:{port}".encode()), *kept,
            (b"x-forwarded-prefix", prefix.encode()), (b"x-forwarded-for", client.encode())]


def _refusal(e: TunnelError, port: int, oid: str) -> JSONResponse:
    detail = (f"nothing answers on port {port} in the sandbox" if e.code == "unreachable"
              else e.detail)
    return problem(RPC_STATUS.get(e.code, 502), detail, oid)


@port_router.api_route("/ports/{sandbox_id}/{port}/{token}/{path:path}", methods=METHODS,
                       include_in_schema=False)
async def proxy(request: Request, ctx: Ctx, oid: OpId, sandbox_id: SandboxId, port: Port,
                token: Token, path: str) -> Response:
    org = ctx.sandboxes.token_org(token, _subject(sandbox_id, port))
    if org is None:
        return problem(404, "no such port URL", oid)
    body = await request.body()
    conn = h11.Connection(h11.CLIENT)
    prefix = f"/ports/{sandbox_id}/{port}/{token}"
    client = request.client.host if request.client else ""
    head = [*_headers(request.headers.raw, port, prefix, client), (b"connection", b"close"),
            (b"content-length", str(len(body)).encode())]
    try:
        raw = conn.send(h11.Request(method=request.method, target=_target(
            path, request.url.query), headers=head)) or b""
    except h11.LocalProtocolError as e:
        return problem(400, f"cannot forward this request: {e}", oid)
    raw += (conn.send(h11.Data(data=body)) or b"") if body else b""
    raw += conn.send(h11.EndOfMessage()) or b""
    tunnel = Tunnel(ctx.io, org, sandbox_id, oid, port)
    try:
        await tunnel.open(raw)
        async with asyncio.timeout(HEAD_TIMEOUT_S):
            answer = await _response(conn, tunnel)
    except TunnelError as e:
        await tunnel.close()
        return _refusal(e, port, oid)
    except (TimeoutError, h11.RemoteProtocolError) as e:
        await tunnel.close()
        return problem(502 if isinstance(e, h11.RemoteProtocolError) else 504,
                       f"port {port} did not answer with HTTP in time", oid)
    headers = [(k, v) for k, v in answer.headers if k.lower() not in HOP]
    out = StreamingResponse(_body(conn, tunnel), status_code=answer.status_code)
    out.raw_headers = headers
    return out


async def _response(conn: h11.Connection, tunnel: Tunnel) -> h11.Response:
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            conn.receive_data(await tunnel.recv())
        elif isinstance(ev, h11.Response):
            return ev
        elif not isinstance(ev, h11.InformationalResponse):
            raise h11.RemoteProtocolError("no response")


async def _body(conn: h11.Connection, tunnel: Tunnel) -> AsyncIterator[bytes]:
    try:
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(await tunnel.recv())
            elif isinstance(ev, h11.Data):
                yield bytes(ev.data)
            else:  # EndOfMessage, or the port closed early
                return
    except (TunnelError, h11.RemoteProtocolError):
        return
    finally:
        await tunnel.close()


# -- WebSocket -------------------------------------------------------------------------
@port_router.websocket("/ports/{sandbox_id}/{port}/{token}/{path:path}")
async def proxy_ws(websocket: WebSocket, sandbox_id: str, port: int, token: str,
                   path: str) -> None:
    ctx = context(websocket)  # type: ignore[arg-type]
    org = (ctx.sandboxes.token_org(token, _subject(sandbox_id, port))
           if 1 <= port <= 65535 and len(token) <= 200 else None)
    if org is None:
        await websocket.close(code=1008, reason="no such port URL")
        return
    peer = WSConnection(ConnectionType.CLIENT)
    subprotocols = list(websocket.scope.get("subprotocols") or [])
    prefix = f"/ports/{sandbox_id}/{port}/{token}"
    extra = _headers(websocket.headers.raw, port, prefix,
                     websocket.client.host if websocket.client else "")[1:]
    tunnel = Tunnel(ctx.io, org, sandbox_id, new_op_id(), port)
    try:
        await tunnel.open(peer.send(ws.Request(
            host=f"127.0.0.1:{port}", target=_target(path, websocket.url.query),
            subprotocols=subprotocols, extra_headers=extra)))
        async with asyncio.timeout(HEAD_TIMEOUT_S):
            accepted = await _handshake(peer, tunnel)
        if accepted is None:
            await websocket.close(code=1011, reason=f"port {port} refused the WebSocket")
            return
        await websocket.accept(subprotocol=accepted.subprotocol)
        await _relay(websocket, peer, tunnel)
    except (TunnelError, TimeoutError) as e:
        await websocket.close(code=1011, reason=str(e)[:100])
    finally:
        await tunnel.close()


async def _handshake(peer: WSConnection, tunnel: Tunnel) -> ws.AcceptConnection | None:
    while True:
        for ev in peer.events():
            if isinstance(ev, ws.AcceptConnection):
                return ev
            if isinstance(ev, ws.RejectConnection | ws.RejectData):
                return None
        data = await tunnel.recv()
        peer.receive_data(data or None)
        if not data:
            return None


class _Relay:
    """Messages between the visitor's WebSocket and the port's, re-framed."""

    def __init__(self, websocket: WebSocket, peer: WSConnection, tunnel: Tunnel) -> None:
        self.websocket, self.peer, self.tunnel = websocket, peer, tunnel
        self.parts: list[Any] = []
        self.size = 0

    async def up(self) -> None:
        while True:
            msg = await self.websocket.receive()
            if msg["type"] == "websocket.disconnect":
                await self.tunnel.send(self.peer.send(ws.CloseConnection(
                    code=msg.get("code", 1000))))
                return
            data: Any = msg.get("text") if msg.get("text") is not None else msg.get("bytes")
            await self.tunnel.send(self.peer.send(ws.Message(data=data or b"")))

    async def down(self) -> None:
        while True:
            data = await self.tunnel.recv()
            self.peer.receive_data(data or None)
            for ev in self.peer.events():
                if await self._deliver(ev):
                    return
            if not data:
                await self.websocket.close(code=1011, reason="the port closed the connection")
                return

    async def _deliver(self, ev: Any) -> bool:
        """Passes one event on; True once the port closed the socket."""
        if isinstance(ev, ws.Message):
            self.parts.append(ev.data)
            self.size += len(ev.data)
            if self.size > MAX_WS_MESSAGE:  # the guest's; not held without bound
                await self.websocket.close(code=1009, reason="message too big")
                return True
            if ev.message_finished:
                parts, self.parts, self.size = self.parts, [], 0
                if isinstance(ev, ws.TextMessage):
                    await self.websocket.send_text("".join(parts))
                else:
                    await self.websocket.send_bytes(b"".join(parts))
        elif isinstance(ev, ws.Ping):
            await self.tunnel.send(self.peer.send(ev.response()))
        elif isinstance(ev, ws.CloseConnection):
            await self.websocket.close(code=ev.code)
            return True
        return False


async def _relay(websocket: WebSocket, peer: WSConnection, tunnel: Tunnel) -> None:
    relay = _Relay(websocket, peer, tunnel)
    await both(relay.up, relay.down, log, "port relay")
