"""Export the bus contracts as docs: JSON Schemas and an AsyncAPI 3.0 file.

    python -m contracts.export          # (re)write docs/schemas and docs/asyncapi.yaml
    python -m contracts.export --check  # exit 1 listing stale files, write nothing

Output is deterministic (sorted keys, stable order, trailing newline), so the
committed docs can be compared with what this module would produce.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from . import billing, procs, rpc
from . import subjects as s
from .catalog import CONSUMER_OWNERS, DLQ_SENDERS, EXTRA_RECEIVERS, RPCS, SENDERS
from .registry import ALL_TYPES, COMMAND_TYPES, EVENT_TYPES

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = "docs/schemas"
ASYNCAPI = "docs/asyncapi.yaml"



class DeadLetter(BaseModel):
    """Payload on corral.dlq.<consumer>; mirrors common.bus.DeadLetter."""

    model_config = ConfigDict(extra="forbid", title="DeadLetter")
    consumer: str = Field(description="durable consumer that gave up")
    subject: str = Field(description="subject of the original message")
    reason: str = Field(description="why: invalid contract, poison, or retries exhausted")
    deliveries: int = Field(description="deliveries so far")
    payload: str = Field(description="original body, UTF-8, first 64 KiB")
    headers: dict[str, str] = Field(description="original NATS headers")


def _type(t: type[BaseModel]) -> str:
    return t.model_fields["type"].default


def _dump_json(doc: dict) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def rpc_models() -> list[type[rpc.RpcModel]]:
    found = {v for mod in (rpc, billing, procs) for v in vars(mod).values()
             if isinstance(v, type) and issubclass(v, rpc.RpcModel) and v is not rpc.RpcModel}
    return sorted(found, key=lambda t: t.__name__)


def nats_match(pattern: str, subject: str) -> bool:
    """NATS wildcard match: `*` one token, `>` one or more trailing tokens."""
    p, t = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(t) > i
        if i >= len(t) or (tok != "*" and tok != t[i]):
            return False
    return len(p) == len(t)


def _sample_subject(channel: str, type_name: str) -> str:
    """A concrete subject of a type on a channel, ids as placeholders (to match filters)."""
    return {"hostCommands": lambda: s.host_command_subject("H", "S", type_name),
            "hostEvents": lambda: s.host_subject("H", type_name),
            "busProbe": lambda: s.BUS_PROBE,
            "usageEvents": lambda: s.usage_subject("O", "S"),
            "spendEvents": lambda: s.spend_subject("O"),
            "hostFacts": lambda: s.host_fact_subject("H", "O", "S", type_name),
            "sandboxEvents": lambda: s.sandbox_subject("O", "S", type_name)}[channel]()


def _owner(durable: str) -> str:
    for prefix, service in CONSUMER_OWNERS.items():
        if durable.startswith(prefix):
            return service
    raise KeyError(f"no owning service known for consumer {durable!r}; add it to CONSUMER_OWNERS")


def schema_files() -> dict[str, str]:
    out = {f"{SCHEMAS}/{_type(t)}.json": _dump_json(t.model_json_schema()) for t in ALL_TYPES}
    for m in rpc_models():
        out[f"{SCHEMAS}/rpc/{m.__name__}.json"] = _dump_json(m.model_json_schema())
    out[f"{SCHEMAS}/dlq/DeadLetter.json"] = _dump_json(DeadLetter.model_json_schema())
    return out


HEADERS: dict[str, Any] = {
    "type": "object",
    "required": ["Nats-Msg-Id", "Corral-Type", "Corral-Op-Id"],
    "properties": {
        "Nats-Msg-Id": {"type": "string", "description": "= payload event_id; JetStream drops "
                        "a duplicate within the stream's duplicate window"},
        "Corral-Type": {"type": "string", "description": "= payload type"},
        "Corral-Op-Id": {"type": "string", "description": "= payload op_id, minted per request "
                         "at the gateway; grep it across every service's logs"},
        "traceparent": {"type": "string", "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-"
                        "[0-9a-f]{2}$", "description": "W3C trace context (OpenTelemetry)"},
    },
}
FAMILIES = (  # channel key, address (from subjects.py), types, description
    ("sandboxEvents", s.sandbox_subject("{org_id}", "{sandbox_id}", "{type}"),
     [t for t in EVENT_TYPES if _type(t).startswith(("Sandbox", "Snapshot", "Image")) and any(
         _type(t) in by_channel.get("sandboxEvents", ()) for by_channel in SENDERS.values())],
     "Sandbox lifecycle facts of the control plane, and the snapshots taken of the sandbox. "
     "Image builds travel here too, with the image id in the sandbox id's place."),
    ("hostFacts", s.host_fact_subject("{host_id}", "{org_id}", "{sandbox_id}", "{type}"),
     [t for t in EVENT_TYPES if _type(t) in s.HOST_FACT_TYPES],
     "What a host reports about a sandbox placed on it, under its own host id (only that "
     "host may publish there; consumers accept it only from the placement's host)."),
    ("hostEvents", s.host_subject("{host_id}", "{type}"),
     [t for t in EVENT_TYPES if _type(t).startswith("Host")],
     "Host registration, heartbeats, loss."),
    ("busProbe", s.BUS_PROBE, [t for t in EVENT_TYPES if _type(t) == "BusProbe"],
     "Each scheduler instance's probe of the host stream, read back through its own "
     "reader: the bus flows for it (docs/reliability.md). One subject for every instance."),
    ("usageEvents", s.usage_subject("{org_id}", "{sandbox_id}"),
     [t for t in EVENT_TYPES if _type(t) == "UsageRecorded"], "Immutable usage line items."),
    ("spendEvents", s.spend_subject("{org_id}"),
     [t for t in EVENT_TYPES if _type(t) == "SpendThresholdCrossed"],
     "An org's month-to-date vCPU-seconds reached 80% or 100% of its monthly cap."),
    ("hostCommands", s.host_command_subject("{host_id}", "{sandbox_id}", "{type}"),
     list(COMMAND_TYPES), "Commands to one host agent; it may subscribe only to its own host_id."),
)
PARAM_DOC = {"org_id": "organisation id", "sandbox_id": "sandbox id",
             "host_id": "host id, derived server-side from the host token",
             "consumer": "durable consumer name", "type": "message type"}


def _ref(*path: str) -> dict:
    return {"$ref": "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in path)}


def _rpc_key(subject: str) -> str:
    words = re.split(r"[._]", re.sub(r"\.\{\w+\}", "", subject.removeprefix("corral.rpc.")))
    return "rpc" + "".join(w.capitalize() for w in words)


class _Doc:
    """Channels, messages and operations under construction."""

    def __init__(self) -> None:
        self.channels: dict = {}
        self.messages: dict = {}
        self.ops: dict = {}

    def channel(self, key: str, address: str | None, desc: str, names: list[str],
                enum: list[str] | None = None) -> None:
        ch: dict = {"address": address, "description": desc,
                    "messages": {n: _ref("components", "messages", n) for n in names}}
        params = re.findall(r"\{(\w+)\}", address or "")
        if params:
            ch["parameters"] = {p: {"description": PARAM_DOC[p]} for p in params}
            if enum and "type" in params:
                ch["parameters"]["type"]["enum"] = enum
        self.channels[key] = ch

    def message(self, name: str, schema: str, **extra: Any) -> None:
        self.messages[name] = {"name": name, "title": name, "contentType": "application/json",
                               "payload": {"$ref": f"./schemas/{schema}"}, **extra}

    def op(self, op_id: str, action: str, channel: str, names: list[str], desc: str,
           **extra: Any) -> None:
        op_id = re.sub(r"\{(\w+)\}", r"\1", op_id)
        assert op_id not in self.ops, op_id
        self.ops[op_id] = {
            "action": action, "channel": _ref("channels", channel), "summary": desc,
            "messages": [_ref("channels", channel, "messages", n) for n in names], **extra}


def _streamed(doc: _Doc) -> None:
    """Events and commands: JetStream, one envelope, dedupe by Nats-Msg-Id."""
    channel_types: dict[str, list[str]] = {}
    for key, address, types, desc in FAMILIES:
        names = channel_types[key] = [_type(t) for t in types]
        doc.channel(key, address, desc, names, enum=names)
        for t in types:
            doc.message(_type(t), f"{_type(t)}.json", summary=(t.__doc__ or _type(t)).strip()
                        .splitlines()[0], traits=[_ref("components", "messageTraits", "envelope")],
                        **{"x-kind": t.KIND})
    sent = {(key, n) for by_channel in SENDERS.values() for key, ns in by_channel.items()
            for n in ns}
    unsent = {(k, n) for k, names in channel_types.items() for n in names} - sent
    if unsent:
        raise KeyError(f"no sender known for {sorted(unsent)}; add them to SENDERS")
    for service, by_channel in SENDERS.items():
        for key, sends in by_channel.items():
            stray = set(sends) - set(channel_types[key])
            if stray:
                raise KeyError(f"{service} cannot send {sorted(stray)} on {key}")
            doc.op(f"{service}.send.{key}", "send", key, list(sends), f"{service} publishes")
    _receivers(doc, channel_types)

    doc.channel("deadLetters", s.dlq_subject("{consumer}"), "Messages a consumer gave up on "
                "(invalid, poison, retries exhausted), or a relay could never publish; the "
                "original is never redelivered.", ["DeadLetter"])
    doc.message("DeadLetter", "dlq/DeadLetter.json")
    for service in DLQ_SENDERS:
        doc.op(f"{service}.send.deadLetters", "send", "deadLetters", ["DeadLetter"],
               f"{service} dead-letters what its consumers cannot process")


def _receivers(doc: _Doc, channel_types: dict[str, list[str]]) -> None:
    """Who receives what: each durable consumer's filters, and core subscribers."""
    for c in s.CONSUMERS + (s.host_agent_consumer("{host_id}"),):
        by_channel: dict[str, list[str]] = {}
        for key, names in channel_types.items():
            for n in names:
                if any(nats_match(f.replace("{host_id}", "H"), _sample_subject(key, n))
                       for f in c.filter_subjects):
                    by_channel.setdefault(key, []).append(n)
        for key, names in by_channel.items():
            suffix = f".{key}" if len(by_channel) > 1 else ""
            doc.op(f"{_owner(c.durable)}.receive.{c.durable}{suffix}", "receive", key, names,
                   c.description, **{"x-jetstream-consumer": c.durable})
    for service, pattern, desc in EXTRA_RECEIVERS:
        for key, names in channel_types.items():
            got = [n for n in names if nats_match(pattern, _sample_subject(key, n))]
            if got:
                doc.op(f"{service}.receive.{got[0]}", "receive", key, got, desc)


def _rpcs(doc: _Doc) -> None:
    """Core NATS request/reply and broadcasts (not streamed)."""
    tp = {"type": "object", "properties": {"traceparent": HEADERS["properties"]["traceparent"]}}
    for m in rpc_models():
        doc.message(m.__name__, f"rpc/{m.__name__}.json", headers=tp)
    replies = sorted({rep.__name__ for *_, rep, _, _, _ in RPCS} | {"RpcError"})
    doc.channel("rpcReply", None, "The requester's inbox (core NATS request/reply); an "
                "RpcError payload on failure.", replies)
    for subject, req, rep, responder, queue, senders in RPCS:
        key = _rpc_key(subject)
        served = f"served by {responder}" + (f" in queue group `{queue}`" if queue else "")
        doc.channel(key, subject, f"Core NATS request/reply (not streamed); {served}.",
                    [req.__name__])
        reply = {"channel": _ref("channels", "rpcReply"),
                 "messages": [_ref("channels", "rpcReply", "messages", r)
                              for r in (rep.__name__, "RpcError")]}
        extra = {"bindings": {"nats": {"queue": queue, "bindingVersion": "0.1.0"}}} if queue else {}
        doc.op(f"{responder}.receive.{key}", "receive", key, [req.__name__],
               f"{responder} answers {subject}", reply=reply, **extra)
        for sender in senders:
            doc.op(f"{sender}.send.{key}", "send", key, [req.__name__],
                   f"{sender} calls {subject}", reply=reply)
    doc.channel("authRevoked", s.AUTH_REVOKED, "Core NATS fan-out: an API key was revoked, "
                "drop cached verifications now.", ["Revoked"])
    doc.op("auth.send.authRevoked", "send", "authRevoked", ["Revoked"], "auth broadcasts")
    doc.op("api_gateway.receive.authRevoked", "receive", "authRevoked", ["Revoked"],
           "gateway drops its auth cache entry")


def asyncapi() -> dict:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    doc = _Doc()
    _streamed(doc)
    _rpcs(doc)
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "Corral bus", "version": version, "description": (
            "Events, commands and RPCs exchanged by Corral services over NATS. Events and "
            "commands are JetStream messages carrying one envelope (event_id, type, version, "
            "occurred_at, op_id, org_id, traceparent); consumers reject unknown types, newer "
            "versions and extra fields to the DLQ. Generated by `python -m contracts.export`; "
            "do not edit.")},
        "defaultContentType": "application/json",
        "servers": {
            "local": {"host": "127.0.0.1:4222", "protocol": "nats",
                      "description": "devstack (`make up`); JetStream enabled"},
            "compose": {"host": "nats:4222", "protocol": "nats", "description": (
                "infra/compose.yaml. Plaintext unless NATS TLS is configured: keep it on a "
                "private network")},
        },
        "channels": doc.channels,
        "operations": doc.ops,
        "components": {
            "messages": doc.messages,
            "messageTraits": {"envelope": {
                "headers": HEADERS,
                "correlationId": {"description": "operation id", "location":
                                  "$message.header#/Corral-Op-Id"}}},
        },
        "x-jetstream": {
            "streams": [dataclasses.asdict(x) for x in s.STREAMS],
            "consumers": [dataclasses.asdict(x) for x in s.CONSUMERS],
            "perHostConsumer": dataclasses.asdict(s.host_agent_consumer("{host_id}")),
            "ackPolicy": "explicit", "deliverPolicy": "all", "storage": "file",
            "note": "consumers get max_deliver + 1 server-side; the last delivery is "
                    "dead-lettered and terminated",
        },
    }


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: object) -> bool:
        return True


def build() -> dict[str, str]:
    files = schema_files()
    files[ASYNCAPI] = ("# Generated by `python -m contracts.export` (make schemas). Do not edit.\n"
                       + yaml.dump(asyncapi(), Dumper=_Dumper, sort_keys=True, allow_unicode=True,
                                   width=100, default_flow_style=False))
    return files


def stale(root: Path = ROOT) -> tuple[dict[str, str], list[str], list[str]]:
    """(wanted files, paths to (re)write, extra schema files to delete)."""
    files = build()
    changed = [p for p, text in sorted(files.items())
               if not (root / p).is_file() or (root / p).read_text() != text]
    have = {str(p.relative_to(root)) for p in (root / SCHEMAS).rglob("*.json")} \
        if (root / SCHEMAS).is_dir() else set()
    return files, changed, sorted(have - files.keys())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m contracts.export",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs are stale; write nothing")
    ap.add_argument("--root", type=Path, default=ROOT, help="repository root")
    args = ap.parse_args(argv)
    files, changed, extra = stale(args.root)
    if args.check:
        for p in changed:
            print(f"stale: {p}")
        for p in extra:
            print(f"not exported (delete): {p}")
        if changed or extra:
            print("contract docs are out of date: run `make schemas`", file=sys.stderr)
            return 1
        return 0
    for p in changed:
        target = args.root / p
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(files[p])
        tmp.replace(target)
    for p in extra:
        (args.root / p).unlink()
    print(f"{len(changed)} written, {len(extra)} removed, {len(files)} files up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
