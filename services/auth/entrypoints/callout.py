"""The NATS auth callout: every connection that is not the auth service's own
is decided here ($SYS.REQ.USER.AUTH, queue group shared by the instances)."""
from __future__ import annotations

import logging

from faststream.nats import NatsBroker, NatsMessage

from common import natsjwt
from common.natsconf import ACCOUNT

from ..adapters.callout_codec import answer, read_request
from ..application.bus_auth import BusAuthorizer
from ..domain.errors import AuthError

log = logging.getLogger("corral.auth.callout")
CALLOUT_SUBJECT = "$SYS.REQ.USER.AUTH"


def register_callout(broker: NatsBroker, authorizer: BusAuthorizer, issuer_seed: str,
                     queue: str = "auth") -> None:
    issuer = natsjwt.public_key(issuer_seed)

    async def decide(msg: NatsMessage) -> str | None:
        try:
            attempt = read_request(msg.body.decode("ascii", "replace"), issuer)
        except natsjwt.InvalidToken as e:
            log.warning("ignored a malformed auth callout request: %s", e)
            return None  # the server times the connection out
        try:
            grant = await authorizer.authorize(attempt.user, attempt.password)
        except AuthError as e:
            log.warning("bus connection refused", extra={"bus_user": attempt.user[:64],
                                                           "reason": e.detail})
            return answer(attempt, issuer_seed, ACCOUNT, None, "not authorized")
        log.info("bus connection authorized", extra={"bus_user": grant.name})
        return answer(attempt, issuer_seed, ACCOUNT, grant)

    broker.subscriber(CALLOUT_SUBJECT, queue=queue)(decide)
