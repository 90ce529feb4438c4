"""The auth callout's wire format (NATS JWT v2): the server's signed request
in, our signed response out, carrying the user's claims and permissions."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from common import natsjwt

from ..domain.bus_access import Grant

REQUEST_AUDIENCE = "nats-authorization-request"


@dataclass(frozen=True)
class ConnectAttempt:
    user_nkey: str  # the key the server made for this connection
    server_id: str
    user: str
    password: str = ""

    def __repr__(self) -> str:  # keep the password out of logs and tracebacks
        return f"ConnectAttempt(user={self.user!r}, server={self.server_id[:8]})"


def read_request(token: str, issuer: str) -> ConnectAttempt:
    """Verify a callout request (signed by a server, addressed to our issuer)."""
    claims = natsjwt.decode(token, "server")
    nats = claims.get("nats")
    if claims.get("aud") != REQUEST_AUDIENCE or claims.get("sub") != issuer \
            or not isinstance(nats, dict):
        raise natsjwt.InvalidToken("not an authorization request for this issuer")
    user_nkey = str(nats.get("user_nkey") or "")
    server = nats.get("server_id") or {}
    opts = nats.get("connect_opts") or {}
    if not natsjwt.is_public_key(user_nkey, "user") or not isinstance(server, dict) \
            or not isinstance(opts, dict):
        raise natsjwt.InvalidToken("malformed authorization request")
    return ConnectAttempt(user_nkey, str(server.get("id") or ""), str(opts.get("user") or ""),
                          str(opts.get("pass") or opts.get("auth_token") or ""))


def _permissions(grant: Grant) -> dict[str, Any]:
    perms: dict[str, Any] = {"pub": {"allow": list(grant.publish)},
                             "sub": {"allow": list(grant.subscribe)}}
    if grant.responses is not None:
        count, seconds = grant.responses
        perms["resp"] = {"max": count, "ttl": seconds * 1_000_000_000}
    return perms


def answer(attempt: ConnectAttempt, seed: str, account: str, grant: Grant | None,
           error: str = "") -> str:
    """The signed response: the user's JWT (placed in `account`), or the refusal."""
    body: dict[str, Any] = {"type": "authorization_response", "version": 2}
    if grant is not None:
        user = {"sub": attempt.user_nkey, "aud": account, "name": grant.name,
                "exp": int(time.time()) + grant.ttl_s,
                "nats": {**_permissions(grant), "subs": -1, "data": -1, "payload": -1,
                         "type": "user", "version": 2}}
        body["jwt"] = natsjwt.encode(user, seed)
    else:
        body["error"] = error or "not authorized"
    return natsjwt.encode({"sub": attempt.user_nkey, "aud": attempt.server_id, "nats": body},
                          seed)
