"""The auth service over real NATS (FastStream, queue group), on SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from common.rpc import RpcFailure, request
from common.service import serve
from contracts import rpc
from contracts import subjects as s
from services.auth.bootstrap import bootstrap
from services.auth.entrypoints.cli import bootstrap_cmd
from services.auth.entrypoints.jobs import jobs
from services.auth.settings import AuthSettings

from .inprocess import start_service, stop_service

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def auth(private_nats, store: str,
               tmp_path: Path) -> AsyncIterator[AuthSettings]:
    """The service in-process; `store` (conftest) is sqlite, or a fresh PG schema."""
    settings = AuthSettings(nats_url=private_nats.url, state_dir=tmp_path / "state", store=store,
                            health_port=0)
    async def run(stop: asyncio.Event, started: asyncio.Event) -> None:
        await serve(await bootstrap(settings), jobs, stop, started)
    task, stop = await start_service(run)
    try:
        yield settings
    finally:
        await stop_service(task, stop)


@pytest.fixture
async def admin(auth: AuthSettings) -> str:
    """An admin API key, provisioned offline (as an operator's first step is)."""
    return (await bootstrap_cmd(auth, "root"))["admin_key"]


async def _admin_setup(nc: Client, admin: str) -> tuple[rpc.Org, rpc.ApiKeyCreated]:
    org = await request(nc, s.RPC_AUTH_CREATE_ORG,
                        rpc.CreateOrg(name="acme", op_id="op-1", actor_key=admin), rpc.Org)
    key = await request(nc, s.RPC_AUTH_CREATE_KEY,
                        rpc.CreateApiKey(org_id=org.id, name="ci", op_id="op-2",
                                         actor_key=admin), rpc.ApiKeyCreated)
    return org, key


async def test_key_lifecycle_and_revocation_broadcast(auth, admin: str, nc: Client,
                                                     caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    org, key = await _admin_setup(nc, admin)
    assert key.key.startswith(key.prefix + "_") and key.org_id == org.id and key.scope == "org"

    p = await request(nc, s.RPC_AUTH_VERIFY, rpc.VerifyKey(key=key.key), rpc.Principal)
    assert (p.key_id, p.org_id, p.scope) == (key.id, org.id, "org")

    seen: asyncio.Queue = asyncio.Queue()
    sub = await nc.subscribe(s.AUTH_REVOKED, cb=seen.put)
    await nc.flush()
    r = await request(nc, s.RPC_AUTH_REVOKE_KEY, rpc.RevokeApiKey(id=key.id, actor_key=admin), rpc.Revoked)
    assert r == rpc.Revoked(id=key.id, revoked=True)
    note = await asyncio.wait_for(seen.get(), 5)
    assert rpc.Revoked.model_validate_json(note.data).id == key.id
    await sub.unsubscribe()

    with pytest.raises(RpcFailure) as e:
        await request(nc, s.RPC_AUTH_VERIFY, rpc.VerifyKey(key=key.key), rpc.Principal)
    assert e.value.code == "unauthorized"
    assert "revoked api key" in caplog.text  # the logs were captured...
    secret = key.key.removeprefix(key.prefix + "_")  # may itself hold "_"
    assert len(secret) >= 32 and key.key not in caplog.text and secret not in caplog.text


async def test_wrong_and_malformed_keys_are_refused(auth, admin: str, nc: Client):
    _, key = await _admin_setup(nc, admin)
    tampered = key.key[:-2] + ("AA" if not key.key.endswith("AA") else "BB")
    for bad in (tampered, "crl_00000000_" + "a" * 43, "not-a-key", key.prefix):
        with pytest.raises(RpcFailure) as e:
            await request(nc, s.RPC_AUTH_VERIFY, rpc.VerifyKey(key=bad), rpc.Principal)
        assert e.value.code == "unauthorized"
    # garbage and wrong-shaped requests get an `invalid` reply, not a timeout
    for body in (b"{not json", b'{"key": 5}', b'{"key": "x", "extra": 1}'):
        reply = await nc.request(s.RPC_AUTH_VERIFY, body, timeout=5)
        assert json.loads(reply.data)["error"] == "invalid"


async def test_admin_rules(auth, admin: str, nc: Client):
    with pytest.raises(RpcFailure) as e:
        await request(nc, s.RPC_AUTH_CREATE_KEY,
                      rpc.CreateApiKey(org_id="no-such-org", name="ci", actor_key=admin),
                      rpc.ApiKeyCreated)
    assert e.value.code == "not_found"
    await request(nc, s.RPC_AUTH_CREATE_ORG, rpc.CreateOrg(name="dup", actor_key=admin), rpc.Org)
    with pytest.raises(RpcFailure) as e:
        await request(nc, s.RPC_AUTH_CREATE_ORG, rpc.CreateOrg(name="dup", actor_key=admin),
                      rpc.Org)
    assert e.value.code == "conflict"
    with pytest.raises(RpcFailure) as e:
        await request(nc, s.RPC_AUTH_CREATE_KEY,
                      rpc.CreateApiKey(name="x", scope="org", actor_key=admin), rpc.ApiKeyCreated)
    assert e.value.code == "invalid"
    second = await request(nc, s.RPC_AUTH_CREATE_KEY,
                           rpc.CreateApiKey(name="root", scope="admin", actor_key=admin),
                           rpc.ApiKeyCreated)
    p = await request(nc, s.RPC_AUTH_VERIFY, rpc.VerifyKey(key=second.key), rpc.Principal)
    assert (p.scope, p.org_id) == ("admin", None)
    with pytest.raises(RpcFailure) as e:
        await request(nc, s.RPC_AUTH_REVOKE_KEY, rpc.RevokeApiKey(id="nope", actor_key=admin),
                      rpc.Revoked)
    assert e.value.code == "not_found"


async def test_admin_calls_check_the_callers_own_key(auth, admin: str, nc: Client):
    """Reaching the subject is not enough: the actor must hold an active admin key."""
    _, org_key = await _admin_setup(nc, admin)
    calls = [(s.RPC_AUTH_CREATE_ORG, rpc.CreateOrg(name="evil", actor_key="{}"), rpc.Org),
             (s.RPC_AUTH_CREATE_KEY, rpc.CreateApiKey(name="evil", scope="admin",
                                                       actor_key="{}"), rpc.ApiKeyCreated),
             (s.RPC_AUTH_REVOKE_KEY, rpc.RevokeApiKey(id=org_key.id, actor_key="{}"),
              rpc.Revoked),
             (s.RPC_AUTH_CREATE_HOST_TOKEN, rpc.CreateHostToken(actor_key="{}"),
              rpc.HostTokenCreated),
             (s.RPC_AUTH_REVOKE_HOST, rpc.RevokeHost(host_id="h-1", actor_key="{}"),
              rpc.HostRevokedResult)]
    for actor in (org_key.key, "crl_00000000_" + "a" * 43, "junk"):
        for subject, req, reply in calls:
            forged = req.model_copy(update={"actor_key": actor})
            with pytest.raises(RpcFailure) as e:
                await request(nc, subject, forged, reply)
            assert e.value.code == "unauthorized", subject
    # nothing happened: the org key still works, no "evil" org exists
    p = await request(nc, s.RPC_AUTH_VERIFY, rpc.VerifyKey(key=org_key.key), rpc.Principal)
    assert p.scope == "org"
    await request(nc, s.RPC_AUTH_CREATE_ORG, rpc.CreateOrg(name="evil", actor_key=admin), rpc.Org)


async def test_host_token_registers_with_server_assigned_id(auth, admin: str, nc: Client):
    t = await request(nc, s.RPC_AUTH_CREATE_HOST_TOKEN, rpc.CreateHostToken(name="node-a", actor_key=admin),
                      rpc.HostTokenCreated)
    assert t.token.startswith("crh_")
    ident = await request(nc, s.RPC_AUTH_REGISTER_HOST,
                          rpc.RegisterHost(token=t.token, hostname="node-a.local"),
                          rpc.HostIdentity)
    assert ident.host_id == t.host_id
    t2 = await request(nc, s.RPC_AUTH_CREATE_HOST_TOKEN, rpc.CreateHostToken(actor_key=admin),
                       rpc.HostTokenCreated)
    assert t2.host_id != t.host_id
    for bad in (t.token[:-1] + ("x" if t.token[-1] != "x" else "y"), "crh_nope"):
        with pytest.raises(RpcFailure) as e:
            await request(nc, s.RPC_AUTH_REGISTER_HOST,
                          rpc.RegisterHost(token=bad, hostname="evil"), rpc.HostIdentity)
        assert e.value.code == "unauthorized"
    # a host cannot choose its id: the field does not exist in the contract
    body = json.dumps({"token": t.token, "hostname": "x", "host_id": "mine"}).encode()
    reply = await nc.request(s.RPC_AUTH_REGISTER_HOST, body, timeout=5)
    assert json.loads(reply.data)["error"] == "invalid"
    # an API key is not a host token
    _, key = await _admin_setup(nc, admin)
    with pytest.raises(RpcFailure) as e:
        await request(nc, s.RPC_AUTH_REGISTER_HOST,
                      rpc.RegisterHost(token=key.key, hostname="x"), rpc.HostIdentity)
    assert e.value.code == "unauthorized"


async def test_bootstrap_cli_provisions_idempotently(auth: AuthSettings, nc: Client):
    env = {**os.environ, "CORRAL_STATE_DIR": str(auth.state_dir), "CORRAL_STORE": auth.store,
           "CORRAL_LOG_LEVEL": "WARNING"}

    def run_cli() -> dict:
        out = subprocess.run([sys.executable, "-m", "services.auth", "bootstrap", "--org", "dev",
                              "--json"], cwd=ROOT, env=env, capture_output=True, timeout=60,
                             check=True)
        assert out.stdout.count(b"\n") == 1  # one JSON line, logs go to stderr
        for secret_field in ("api_key", "admin_key", "host_token"):
            assert b"crl_" not in out.stderr and b"crh_" not in out.stderr, secret_field
        return json.loads(out.stdout)

    first = await asyncio.to_thread(run_cli)
    assert set(first) == {"org_id", "api_key", "admin_key", "host_token", "host_id"}
    second = await asyncio.to_thread(run_cli)
    assert (second["org_id"], second["host_id"]) == (first["org_id"], first["host_id"])

    p = await request(nc, s.RPC_AUTH_VERIFY, rpc.VerifyKey(key=second["api_key"]), rpc.Principal)
    assert (p.org_id, p.scope) == (first["org_id"], "org")
    p = await request(nc, s.RPC_AUTH_VERIFY, rpc.VerifyKey(key=second["admin_key"]),
                      rpc.Principal)
    assert p.scope == "admin"
    ident = await request(nc, s.RPC_AUTH_REGISTER_HOST,
                          rpc.RegisterHost(token=second["host_token"], hostname="dev"),
                          rpc.HostIdentity)
    assert ident.host_id == first["host_id"]
    with pytest.raises(RpcFailure):  # the first run's secrets were rotated out
        await request(nc, s.RPC_AUTH_VERIFY, rpc.VerifyKey(key=first["api_key"]), rpc.Principal)


async def test_rpc_client_limits(nc: Client):
    with pytest.raises(RpcFailure) as e:
        await request(nc, "corral.rpc.test.nobody", rpc.VerifyKey(key="k"), rpc.Principal,
                      timeout=1)
    assert e.value.code == "unavailable"

    async def huge(msg) -> None:
        await msg.respond(b'{"key_id": "' + b"x" * 100_000 + b'"}')

    async def junk(msg) -> None:
        await msg.respond(b'{"unexpected": true}')

    await nc.subscribe("corral.rpc.test.huge", cb=huge)
    await nc.subscribe("corral.rpc.test.junk", cb=junk)
    for subject in ("corral.rpc.test.huge", "corral.rpc.test.junk"):
        with pytest.raises(RpcFailure) as e:
            await request(nc, subject, rpc.VerifyKey(key="k"), rpc.Principal, timeout=5)
        assert e.value.code == "internal"
