"""Request/reply payloads (core NATS, not streamed)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RpcModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RpcError(RpcModel):
    error: str  # stable code: "invalid", "not_found", "conflict", "unauthorized", "internal"
    detail: str = ""


class VerifyKey(RpcModel):
    key: str = Field(min_length=1, max_length=256)
    op_id: str = Field(default="-", max_length=64)


class Principal(RpcModel):
    key_id: str
    org_id: str | None
    scope: Literal["org", "admin"]


class CreateOrg(RpcModel):
    name: str = Field(min_length=1, max_length=100)
    op_id: str = Field(default="-", max_length=64)


class Org(RpcModel):
    id: str
    name: str
    created_at: str


class CreateApiKey(RpcModel):
    org_id: str | None = None
    name: str = Field(min_length=1, max_length=100)
    scope: Literal["org", "admin"] = "org"
    op_id: str = Field(default="-", max_length=64)


class ApiKeyCreated(RpcModel):
    id: str
    prefix: str
    key: str
    org_id: str | None
    scope: Literal["org", "admin"]


class RevokeApiKey(RpcModel):
    id: str
    op_id: str = Field(default="-", max_length=64)


class Revoked(RpcModel):
    id: str
    revoked: bool


class CreateHostToken(RpcModel):
    name: str = Field(default="host", min_length=1, max_length=100)
    op_id: str = Field(default="-", max_length=64)


class HostTokenCreated(RpcModel):
    host_id: str
    token: str


class RegisterHost(RpcModel):
    token: str = Field(min_length=1, max_length=256)
    hostname: str = Field(max_length=253)


class HostIdentity(RpcModel):
    host_id: str
