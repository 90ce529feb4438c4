"""The Sandbox aggregate: its state is a fold over contract facts.

Every stored event carries the contract message (`envelope`) so the store is
the outbox and the history is exactly what went over the bus. Facts are
deduplicated by `event_id`, so redelivery and replays change nothing.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from eventsourcing.domain import Aggregate, event

from common.timefmt import parse_time, utc_text

from .facts import FactLog

LIVE = ("requested", "scheduled", "starting", "running", "paused")
ENDED = ("stopped", "destroyed", "failed", "lost")
NAMESPACE = uuid.UUID("6f1c1d4e-3b0a-4f9e-9a8a-5c0f3f6a9d21")


def sandbox_uuid(org_id: str, idempotency_key: str | None) -> uuid.UUID:
    """Idempotent creates map one (org, key) to one sandbox id."""
    if idempotency_key:
        return uuid.uuid5(NAMESPACE, f"{org_id}/{idempotency_key}")
    return uuid.uuid4()


class Sandbox(FactLog, Aggregate):
    @staticmethod
    def create_id(envelope: dict[str, Any]) -> uuid.UUID:
        return uuid.UUID(envelope["sandbox_id"])

    @event("Requested")
    def __init__(self, envelope: dict[str, Any], sealed_env: str | None = None):
        """`sealed_env`: the env values, sealed with the gateway's key (the
        envelope, which the bus carries, holds none)."""
        self.sealed_env = sealed_env
        self.org_id: str = envelope["org_id"]
        self.spec: dict[str, Any] = envelope["spec"]
        self.request_hash: str = envelope["request_hash"]
        self.op_id: str = envelope["op_id"]
        self.state = "requested"
        self.host_id: str | None = None
        self.requested_at: str = utc_text(parse_time(envelope["occurred_at"]))
        self.expires_at: str = utc_text(parse_time(envelope["occurred_at"])
                                   + timedelta(seconds=envelope["spec"]["ttl_seconds"]))
        self.warned_for: str | None = None
        self.started_at: str | None = None
        self.ended_at: str | None = None
        self.failure: dict[str, str] | None = None
        self.destroy_requested = False
        self.stop_requested = False
        self.pause_requested = False
        self.resume_requested = False
        self.accel: str | None = None
        self.ip: str | None = None
        self.start_mode: str | None = None
        self.started_while_lost = False  # its boot finished after it was recorded lost
        self.seen: list[str] = [envelope["event_id"]]
        self.history_types: list[str] = ["SandboxRequested"]

    @property
    def name(self) -> str | None:
        return self.spec.get("name")

    @property
    def live(self) -> bool:
        return self.state in LIVE

    def missing_prerequisite(self, envelope: dict[str, Any]) -> str | None:
        """The causally earlier fact this one needs, if not yet folded in.

        Facts come from several producers and a redelivery can overtake the
        message it followed; holding a fact back until its cause is known
        keeps the history in causal order.
        """
        seen = set(self.history_types)
        kind = envelope["type"]
        from_host = envelope.get("host_id") is not None
        needs: tuple[str, ...] = ()
        if kind == "SandboxStarting":
            needs = ("SandboxScheduled",)
        elif kind == "SandboxStarted" or (kind == "SandboxFailed" and from_host):
            needs = ("SandboxStarting",)
        elif kind == "SandboxDestroyed" and self.state == "lost":
            needs = ()  # destroyed on its returning host by the scheduler's policy
        elif kind == "SandboxDestroyed":
            needs = ("SandboxDestroyRequested",)
            if from_host and "SandboxScheduled" in seen:
                needs += ("SandboxStarted|SandboxFailed",)
        elif kind == "SandboxStopped":
            needs = ("SandboxStopRequested", "SandboxStarted|SandboxFailed")
        elif kind == "SandboxPaused":
            needs = ("SandboxPauseRequested",)
        elif kind == "SandboxResumed":
            needs = ("SandboxResumeRequested",)
        for need in needs:
            if not seen.intersection(need.split("|")):
                return need
        return None

    @event("Fact")
    def _fact(self, envelope: dict[str, Any]) -> None:
        self._apply(envelope)

    @event("Folded")
    def _folded(self, fact: dict[str, Any]) -> None:
        self._apply(fact)

    def _apply(self, envelope: dict[str, Any]) -> None:
        self.seen.append(envelope["event_id"])
        self.history_types.append(envelope["type"])
        _TRANSITIONS[envelope["type"]](self, envelope)

    def can_destroy(self) -> bool:
        return not self.destroy_requested and self.state != "destroyed"

    def expiry_due(self, now: datetime, warn_s: float) -> str | None:
        """"destroy" at the deadline, "warn" once per deadline shortly before it."""
        if not self.live or self.destroy_requested:
            return None
        deadline = parse_time(self.expires_at)
        if now >= deadline:
            return "destroy"
        if now >= deadline - timedelta(seconds=warn_s) and self.warned_for != self.expires_at:
            return "warn"
        return None

    def can_stop(self) -> bool:
        return self.state in LIVE and not self.stop_requested and not self.destroy_requested


def _scheduled(sb: Sandbox, e: dict) -> None:
    sb.host_id = e["host_id"]
    if sb.state == "requested":
        sb.state = "scheduled"


def _starting(sb: Sandbox, e: dict) -> None:
    sb.host_id = e["host_id"]
    if sb.state in ("requested", "scheduled"):
        sb.state = "starting"


def _started(sb: Sandbox, e: dict) -> None:
    sb.host_id = e["host_id"]
    sb.started_at = e["occurred_at"]
    sb.accel, sb.ip, sb.start_mode = e.get("accel"), e.get("ip"), e.get("start_mode")
    if sb.state in ("requested", "scheduled", "starting"):
        sb.state = "running"
    elif sb.state == "lost":  # its host finished the boot: a recovery will say it runs
        sb.started_while_lost = True


def _stop_requested(sb: Sandbox, e: dict) -> None:
    sb.stop_requested = True
    if sb.state in LIVE:
        sb.state = "stopping"


def _stopped(sb: Sandbox, e: dict) -> None:
    if sb.state not in ("destroyed", "failed", "lost"):
        sb.state = "stopped"
        sb.ended_at = sb.ended_at or e["occurred_at"]


def _destroy_requested(sb: Sandbox, e: dict) -> None:
    sb.destroy_requested = True
    if sb.state in LIVE:
        sb.state = "stopping"


def _destroyed(sb: Sandbox, e: dict) -> None:
    sb.state = "destroyed"
    sb.ended_at = sb.ended_at or e["occurred_at"]


def _failed(sb: Sandbox, e: dict) -> None:
    if sb.state != "destroyed":
        sb.state = "failed"
        sb.failure = e["failure"]
        sb.ended_at = sb.ended_at or e["occurred_at"]


def _pause_requested(sb: Sandbox, e: dict) -> None:
    sb.pause_requested = True


def _paused(sb: Sandbox, e: dict) -> None:
    sb.pause_requested = False
    if sb.state == "running":
        sb.state = "paused"


def _resume_requested(sb: Sandbox, e: dict) -> None:
    sb.resume_requested = True


def _resumed(sb: Sandbox, e: dict) -> None:
    sb.resume_requested = False
    if sb.state == "paused":
        sb.state = "running"


def _start_requested(sb: Sandbox, e: dict) -> None:
    if sb.state == "stopped":
        sb.state = "starting"
        sb.stop_requested = False
        sb.ended_at = None


def _expiring(sb: Sandbox, e: dict) -> None:
    sb.warned_for = utc_text(parse_time(e["expires_at"]))


def _ttl_extended(sb: Sandbox, e: dict) -> None:
    sb.expires_at = utc_text(parse_time(e["expires_at"]))


def _lost(sb: Sandbox, e: dict) -> None:
    if sb.state not in ("destroyed", "stopped", "failed"):
        sb.state = "lost"
        sb.failure = {"code": "host_lost", "message": e.get("reason", "host lost")}
        sb.ended_at = sb.ended_at or e["occurred_at"]


def _recovered(sb: Sandbox, e: dict) -> None:
    """Recorded lost, running on its host after all: live again (running if its
    boot was reported finished after the inventory that found it starting)."""
    if sb.state == "lost":
        started = getattr(sb, "started_while_lost", False)
        sb.state = "running" if e["state"] == "starting" and started else e["state"]
        sb.started_while_lost = False
        sb.host_id = e["host_id"]
        sb.failure = None
        sb.ended_at = None


_TRANSITIONS = {
    "SandboxScheduled": _scheduled,
    "SandboxStarting": _starting,
    "SandboxStarted": _started,
    "SandboxStopRequested": _stop_requested,
    "SandboxStopped": _stopped,
    "SandboxDestroyRequested": _destroy_requested,
    "SandboxDestroyed": _destroyed,
    "SandboxFailed": _failed,
    "SandboxLost": _lost,
    "SandboxRecovered": _recovered,
    "SandboxExpiring": _expiring,
    "SandboxPauseRequested": _pause_requested,
    "SandboxPaused": _paused,
    "SandboxResumeRequested": _resume_requested,
    "SandboxResumed": _resumed,
    "SandboxStartRequested": _start_requested,
    "SandboxTtlExtended": _ttl_extended,
}
SANDBOX_FACTS = frozenset(_TRANSITIONS)
