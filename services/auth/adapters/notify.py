"""What the auth service tells the rest of the platform: key revocations (a
core broadcast: gateways drop cached principals), host revocations (a
HostRevoked fact on JetStream, and the host's live connections cut)."""
from __future__ import annotations

import json
import logging
import ssl

import nats
from faststream.nats import NatsBroker
from nats.aio.client import Client

from common.bus import servers_of
from common.natsconf import SYSTEM_USER
from contracts.host import HostRevoked
from contracts.rpc import Revoked
from contracts.subjects import AUTH_REVOKED, host_subject

log = logging.getLogger("corral.auth.notify")


class NatsRevocationNotifier:
    def __init__(self, broker: NatsBroker, system: Client | None = None):
        self.broker = broker
        self.system = system  # the system-account connection (monitoring, kicks)

    async def key_revoked(self, key_id: str) -> None:
        await self.broker.publish(Revoked(id=key_id, revoked=True), AUTH_REVOKED)

    async def host_revoked(self, host_id: str, op_id: str) -> int:
        fact = HostRevoked(op_id=op_id, host_id=host_id)
        js = self.broker.connection.jetstream()
        await js.publish(host_subject(host_id, fact.type), fact.to_json(), timeout=10,
                         headers={"Nats-Msg-Id": fact.event_id})
        return await self._disconnect(f"host:{host_id}") if self.system else 0

    async def _disconnect(self, user: str) -> int:
        """Kick every connection of `user`, on every server of the cluster."""
        assert self.system is not None
        inbox = self.system.new_inbox()
        sub = await self.system.subscribe(inbox)
        await self.system.publish("$SYS.REQ.SERVER.PING.CONNZ",
                                  json.dumps({"user": user, "limit": 1024}).encode(),
                                  reply=inbox)
        cut = 0
        try:
            while True:
                msg = await sub.next_msg(timeout=0.5)
                reply = json.loads(msg.data)
                server = reply.get("server", {}).get("id")
                for conn in (reply.get("data") or {}).get("connections") or []:
                    await self.system.request(f"$SYS.REQ.SERVER.{server}.KICK",
                                              json.dumps({"cid": conn["cid"]}).encode(),
                                              timeout=2)
                    cut += 1
        except nats.errors.TimeoutError:
            pass  # every server answered
        finally:
            await sub.unsubscribe()
        log.info("cut %d connection(s) of %s", cut, user)
        return cut


async def connect_system(url: str, password: str, tls: ssl.SSLContext | None = None) -> Client:
    return await nats.connect(servers_of(url), user=SYSTEM_USER, password=password,
                              inbox_prefix="_INBOX_sys", name="corral-auth-system",
                              max_reconnect_attempts=-1, **({"tls": tls} if tls else {}))
