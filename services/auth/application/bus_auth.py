"""Who may connect to the bus, as what (the auth callout's decision)."""
from __future__ import annotations

import hmac
import logging

from common.natsconf import password_digest
from contracts.subjects import HOST_BUS_USER, host_inbox

from ..domain.bus_access import SERVICES, Grant, host_grant, service_grant
from ..domain.errors import Unauthorized
from .service import AuthService

log = logging.getLogger("corral.auth.bus")


def parse_digests(text: str) -> dict[str, str]:
    """"gateway:<sha256 hex>,scheduler:...": the services' password digests."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, hexdigest = item.partition(":")
        if name not in SERVICES or len(hexdigest) != 64:
            raise ValueError(f"bad service credential entry for {name!r}")
        out[name] = hexdigest
    return out


class BusAuthorizer:
    """A control-plane service proves itself with its password (only digests
    are configured here); a host agent with its host token, which must be
    active in the store and decides its host id."""

    def __init__(self, auth: AuthService, service_digests: dict[str, str]) -> None:
        self.auth = auth
        self.digests = service_digests

    async def authorize(self, user: str, password: str) -> Grant:
        if user == HOST_BUS_USER:
            token = await self.auth.host_token(password)
            return host_grant(token.host_id, host_inbox(password))
        expected = self.digests.get(user)
        if expected is None or not hmac.compare_digest(password_digest(password), expected):
            raise Unauthorized("unknown bus user or wrong password")
        return service_grant(user)
