"""The bus's trust boundary on a real nats-server with the real configuration
(auth callout answered by the real auth service): who may connect, and what
each principal may publish and subscribe. Every attack is replayed by the
kind of peer the issue names (no credentials, a tenant's API key, another
host's token) and must be refused and change nothing."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.errors import NoServersError

from common.bus import Bus as ServiceBus
from common.natsconf import BusSecrets, service_login
from common.natsserver import NatsServer
from common.rpc import RpcFailure, request
from common.service import serve
from contracts import rpc
from contracts import subjects as s
from contracts.host import HostCapacity, HostHeartbeat
from contracts.sandbox import Failure, SandboxFailed
from services.auth.bootstrap import bootstrap
from services.auth.entrypoints.cli import bootstrap_cmd
from services.auth.entrypoints.jobs import jobs
from services.auth.settings import AuthSettings

from .inprocess import start_service, stop_service

pytestmark = pytest.mark.integration


@dataclass
class Bus:
    url: str
    secrets: BusSecrets
    settings: AuthSettings
    creds: dict[str, str] = field(default_factory=dict)


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[Bus]:
    secrets = BusSecrets.generate()
    server = NatsServer(tmp_path / "nats", bus=secrets).start()
    env = secrets.env_for("auth")
    settings = AuthSettings(nats_url=server.url, state_dir=tmp_path / "state", store="sqlite",
                            nats_user=env["CORRAL_NATS_USER"],
                            nats_password=env["CORRAL_NATS_PASSWORD"],
                            bus_issuer_seed=env["CORRAL_BUS_ISSUER_SEED"],
                            bus_system_password=env["CORRAL_BUS_SYSTEM_PASSWORD"],
                            bus_service_digests=env["CORRAL_BUS_SERVICE_DIGESTS"])
    b = Bus(server.url, secrets, settings, await bootstrap_cmd(settings, "acme"))

    async def run(stop: asyncio.Event, started: asyncio.Event) -> None:
        await serve(await bootstrap(settings), jobs, stop, started)
    task, stop = await start_service(run)
    login = service_login(secrets, "gateway")
    topology = ServiceBus(server.url, "t", login["user"], login["password"],
                          login["inbox_prefix"])
    await topology.connect()
    await topology.ensure_topology()  # the streams, as a gateway declares them
    await topology.close()
    try:
        yield b
    finally:
        await stop_service(task, stop)
        server.stop()


class Peer:
    """A connection that records the server's refusals."""

    def __init__(self, nc: Client, errors: list[str]) -> None:
        self.nc, self.errors = nc, errors

    async def refused(self, action) -> bool:
        """Run `action`; True if the server answered it with a permissions violation."""
        before = len(self.errors)
        try:
            await action()
        except Exception as e:  # noqa: BLE001 - a refused request times out
            self.errors.append(f"raised {e!r}")
        await self.nc.flush(timeout=2)
        await asyncio.sleep(0.2)
        return any("permissions violation" in e.lower() for e in self.errors[before:])


async def connect(url: str, **login: str) -> Peer:
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e))
    nc = await nats.connect(url, connect_timeout=3, allow_reconnect=False, error_cb=on_error,
                            **login)
    return Peer(nc, errors)


async def host_peer(bus: Bus, token: str) -> Peer:
    return await connect(bus.url, user=s.HOST_BUS_USER, password=token,
                         inbox_prefix=s.host_inbox(token))


async def refused_connection(url: str, **login: str) -> bool:
    try:
        nc = await nats.connect(url, connect_timeout=3, allow_reconnect=False,
                                max_reconnect_attempts=0, **login)
    except (NoServersError, nats.errors.Error, OSError):
        return True
    await nc.close()
    return False


async def test_who_may_connect(bus: Bus):
    api_key, admin_key = bus.creds["api_key"], bus.creds["admin_key"]
    for login in ({}, {"user": "gateway", "password": "guess"},
                  {"user": "gateway", "password": api_key},  # a tenant's key is no bus login
                  {"user": s.HOST_BUS_USER, "password": api_key},
                  {"user": s.HOST_BUS_USER, "password": "crh_00000000_" + "a" * 43},
                  {"user": "ops", "password": admin_key}, {"token": api_key}):
        assert await refused_connection(bus.url, **login), login
    for role in ("gateway", "scheduler", "billing", "ops"):
        peer = await connect(bus.url, **service_login(bus.secrets, role))
        assert peer.nc.is_connected
        await peer.nc.close()
    host = await host_peer(bus, bus.creds["host_token"])
    assert host.nc.is_connected
    await host.nc.close()


async def test_a_host_reaches_only_its_own_subjects(bus: Bus):
    gw = await connect(bus.url, **service_login(bus.secrets, "gateway"))
    admin = bus.creds["admin_key"]
    other = await request(gw.nc, s.RPC_AUTH_CREATE_HOST_TOKEN,
                          rpc.CreateHostToken(name="evil", actor_key=admin), rpc.HostTokenCreated)
    victim_id, org = bus.creds["host_id"], bus.creds["org_id"]
    evil = await host_peer(bus, other.token)
    js = evil.nc.jetstream()
    ids = dict(op_id="op", org_id=org, sandbox_id="sbx-1")
    forged_fail = SandboxFailed(failure=Failure(code="x", message="forged"), host_id=victim_id,
                                **ids).to_json()
    cap = HostCapacity(vcpus=512, memory_mib=1 << 20, max_sandboxes=1000)

    def beat(host_id: str) -> bytes:
        return HostHeartbeat(op_id="op", host_id=host_id, seq=0, accel="kvm", capacity=cap,
                             running=0, used_vcpus=0, used_memory_mib=0,
                             interval_s=1).to_json()

    async def sub(subject: str) -> None:
        await evil.nc.subscribe(subject)

    async def pub(subject: str, data: bytes = b"{}") -> None:
        await evil.nc.publish(subject, data)

    attacks = {
        "mint an admin key": lambda: request(evil.nc, s.RPC_AUTH_CREATE_KEY, rpc.CreateApiKey(
            name="x", scope="admin", actor_key=admin), rpc.ApiKeyCreated, 1),
        "mint a host token": lambda: pub(s.RPC_AUTH_CREATE_HOST_TOKEN),
        "sniff API keys": lambda: sub(s.RPC_AUTH_VERIFY),
        "read another org's events": lambda: js.subscribe(
            "corral.evt.sandbox.>", stream="CORRAL_SANDBOX", ordered_consumer=True),
        "forge a control-plane fact": lambda: pub(
            s.sandbox_subject(org, "sbx-1", "SandboxFailed"), forged_fail),
        "report as another host": lambda: pub(
            s.host_fact_subject(victim_id, org, "sbx-1", "SandboxFailed"), forged_fail),
        "a fact type no host reports": lambda: pub(
            s.host_fact_subject(other.host_id, org, "sbx-1", "SandboxScheduled")),
        "heartbeat as another host": lambda: pub(s.host_subject(victim_id, "HostHeartbeat"),
                                                 beat(victim_id)),
        "heartbeat as a made-up host": lambda: pub(s.host_subject("h-made-up", "HostHeartbeat"),
                                                   beat("h-made-up")),
        "declare a host lost": lambda: pub(s.host_subject(victim_id, "HostLost")),
        "revoke a host": lambda: pub(s.host_subject(other.host_id, "HostRevoked")),
        "read another host's commands": lambda: sub(f"corral.cmd.host.{victim_id}.>"),
        "pull another host's consumer": lambda: pub(
            f"$JS.API.CONSUMER.MSG.NEXT.CORRAL_HOSTCMD.host-{victim_id}"),
        "serve another host's RPC": lambda: sub(s.host_rpc_subject(victim_id, ">")),
        "exec in another host's sandbox": lambda: pub(s.host_rpc_subject(victim_id, "exec")),
        "fetch another host's env": lambda: pub(s.gateway_env_subject(victim_id)),
        "answer the auth callout": lambda: sub("$SYS.REQ.USER.AUTH"),
        "read another host's replies": lambda: sub(s.host_inbox(bus.creds["host_token"]) + ".>"),
        "create a stream": lambda: pub("$JS.API.STREAM.CREATE.EVIL"),
        "delete a consumer": lambda: pub(
            "$JS.API.CONSUMER.DELETE.CORRAL_SANDBOX.gateway-sandbox-ingest"),
    }
    for what, attack in attacks.items():
        assert await evil.refused(attack), what
    # what it may do: its own facts, heartbeats and RPC subjects
    for ok in (lambda: pub(s.host_subject(other.host_id, "HostHeartbeat"), beat(other.host_id)),
               lambda: sub(s.host_rpc_subject(other.host_id, ">"))):
        assert not await evil.refused(ok)
    await evil.nc.close()
    await gw.nc.close()


async def test_control_plane_principals_are_least_privileged(bus: Bus):
    gw = await connect(bus.url, **service_login(bus.secrets, "gateway"))
    assert await gw.refused(lambda: gw.nc.subscribe(s.RPC_AUTH_VERIFY))  # no key sniffing
    assert await gw.refused(lambda: gw.nc.subscribe("_INBOX_scheduler.>"))
    assert await gw.refused(lambda: gw.nc.publish(s.host_command_subject("h", "s", "x"), b"{}"))
    sched = await connect(bus.url, **service_login(bus.secrets, "scheduler"))
    assert await sched.refused(lambda: sched.nc.publish(s.RPC_AUTH_CREATE_KEY, b"{}"))
    assert await sched.refused(lambda: sched.nc.publish(s.host_subject("h", "HostRevoked"),
                                                        b"{}"))
    ops = await connect(bus.url, **service_login(bus.secrets, "ops"))
    for subject in (s.sandbox_subject("o", "s", "SandboxFailed"), s.RPC_AUTH_CREATE_KEY,
                    s.host_command_subject("h", "s", "StopSandbox")):
        assert await ops.refused(lambda subject=subject: ops.nc.publish(subject, b"{}"))
    for p in (gw, sched, ops):
        await p.nc.close()


async def test_admin_calls_need_an_admin_key_whoever_relays_them(bus: Bus):
    gw = await connect(bus.url, **service_login(bus.secrets, "gateway"))
    for actor in (bus.creds["api_key"], "nope"):
        with pytest.raises(RpcFailure) as e:
            await request(gw.nc, s.RPC_AUTH_CREATE_KEY, rpc.CreateApiKey(
                name="x", scope="admin", actor_key=actor), rpc.ApiKeyCreated)
        assert e.value.code == "unauthorized"
    await gw.nc.close()


async def test_revoking_a_host_cuts_it_off_for_good(bus: Bus):
    gw = await connect(bus.url, **service_login(bus.secrets, "gateway"))
    ops = await connect(bus.url, **service_login(bus.secrets, "ops"))
    token, host_id = bus.creds["host_token"], bus.creds["host_id"]
    host = await host_peer(bus, token)
    done = await request(gw.nc, s.RPC_AUTH_REVOKE_HOST, rpc.RevokeHost(
        host_id=host_id, actor_key=bus.creds["admin_key"]), rpc.HostRevokedResult, 10)
    assert (done.revoked_tokens, done.disconnected) == (1, 1)
    for _ in range(50):
        if not host.nc.is_connected:
            break
        await asyncio.sleep(0.1)
    assert not host.nc.is_connected
    assert await refused_connection(bus.url, user=s.HOST_BUS_USER, password=token)
    sub = await ops.nc.jetstream().subscribe(s.host_subject(host_id, "HostRevoked"),
                                             stream="CORRAL_HOST", ordered_consumer=True)
    fact = json.loads((await sub.next_msg(timeout=5)).data)
    assert fact["type"] == "HostRevoked" and fact["host_id"] == host_id
    for p in (gw, ops):
        await p.nc.close()


async def test_a_deployment_bundle_runs_over_tls_only(tmp_path: Path):
    """`corral secrets init` output, used as compose uses it: NATS started from
    nats.conf, each service configured from its own env file, TLS verified."""
    from common.deploy import Layout, write_bundle
    from common.natsserver import free_port
    from services.api_gateway.settings import GatewaySettings

    d, port = tmp_path / "secrets", free_port()
    layout = Layout(nats_url=f"tls://127.0.0.1:{port}", listen=f"127.0.0.1:{port}",
                    monitor_port=None, nats_tls_dir=str(d / "tls"),
                    nats_store=str(tmp_path / "js"), service_ca=str(d / "tls" / "ca.pem"))
    write_bundle(d, BusSecrets.generate(), layout, secrets_key="k" * 43)
    assert all((d / f).stat().st_mode & 0o077 == 0
               for f in ("bus-secrets.json", "nats.conf", "auth.env", "gateway.env",
                         "tls/server-key.pem"))
    conf = (d / "nats.conf").read_text()
    assert "max_payload: 1048576" in conf and "tls {" in conf and "auth_callout" in conf
    server = NatsServer(tmp_path / "js", port=port, config=d / "nats.conf").start()
    try:
        auth = AuthSettings(_env_file=str(d / "auth.env"),  # type: ignore[call-arg]
                            state_dir=tmp_path / "state", store="sqlite")
        assert auth.nats_ca_file is not None and auth.bus_issuer_seed

        async def run(stop: asyncio.Event, started: asyncio.Event) -> None:
            await serve(await bootstrap(auth), jobs, stop, started)
        task, stop = await start_service(run)
        try:
            gw = GatewaySettings(_env_file=str(d / "gateway.env"))  # type: ignore[call-arg]
            assert gw.secrets_key == "k" * 43 and gw.nats_url.startswith("tls://")
            bus = ServiceBus.of_service(gw, "gateway", "bundle-test")
            await bus.connect()
            await bus.ensure_topology()
            assert bus.client.connected_url is not None and bus.client.is_connected
            await bus.close()
            login = {"user": gw.nats_user, "password": gw.nats_password}
            # plaintext is refused, and so is a server the client cannot verify
            assert await refused_connection(f"nats://127.0.0.1:{port}", **login)
            assert await refused_connection(f"tls://127.0.0.1:{port}", **login)
        finally:
            await stop_service(task, stop)
    finally:
        server.stop()
