"""Sandbox use cases over the event store (sync: call via asyncio.to_thread)."""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import MutableOrImmutableAggregate

from common.combine import Combiner
from common.eventstore import StoreApp
from common.timefmt import parse_time
from contracts import Envelope
from contracts.sandbox import (SandboxDestroyRequested, SandboxExpiring, SandboxPauseRequested,
                               SandboxRequested, SandboxResumeRequested, SandboxSpec,
                               SandboxStartRequested, SandboxStopRequested, SandboxTtlExtended)
from contracts.image import ImageEvent
from contracts.snapshot import SnapshotEvent

from ..domain.name_claim import NameClaim, claim_uuid
from ..domain.quota import Limits, OrgLive, OrgSnapshots, org_live_uuid
from ..domain.sandbox import ENDED, SANDBOX_FACTS, Sandbox, sandbox_uuid
from .errors import (Conflict, IdempotencyMismatch, NotFound, OutOfOrder, TooMany, Unprocessable,
                     UseCaseError)
from .ports import Secrets
from .images import IMAGE_FACTS, ImageCases
from .snapshots import SNAPSHOT_FACTS, SnapshotCases


def canonical(spec: SandboxSpec) -> bytes:
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True,
                      separators=(",", ":")).encode()


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class _Create:
    spec: SandboxSpec
    op_id: str
    traceparent: str | None
    digest: str
    sid: uuid.UUID
    pin: str | None
    limits: Limits


def _uuid(sandbox_id: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(sandbox_id)
    except (ValueError, AttributeError, TypeError):
        return None


class SandboxLedger(ImageCases, SnapshotCases, StoreApp):
    name = "gateway"
    # an org's quota gains events with every sandbox, for ever: load from a snapshot
    snapshotting_intervals: ClassVar[dict[type[MutableOrImmutableAggregate[Any]], int]] = {
        OrgLive: 100, OrgSnapshots: 100}

    def __init__(self, env: dict[str, str] | None, secrets: Secrets) -> None:
        super().__init__(env)
        self.secrets = secrets
        self._creates: Combiner[_Create, tuple[Sandbox, bool]] = Combiner(self._create_batch)
        # told (start mode, seconds from the request) when a sandbox first runs
        self.on_first_start: Callable[[str | None, float], None] | None = None

    def find(self, sandbox_id: str, org_id: str | None) -> Sandbox:
        """The caller's sandbox; another org's is reported as absent."""
        uid = _uuid(sandbox_id)
        if uid is None:
            raise NotFound("no such sandbox")
        try:
            sb: object = self.repository.get(uid)
        except AggregateNotFoundError:
            raise NotFound("no such sandbox") from None
        if not isinstance(sb, Sandbox) or (org_id is not None and sb.org_id != org_id):
            raise NotFound("no such sandbox")
        return sb

    def request(self, org_id: str, spec: SandboxSpec, op_id: str, traceparent: str | None,
                idempotency_key: str | None, limits: Limits = DEFAULT_LIMITS
                ) -> tuple[Sandbox, bool]:
        """Record a SandboxRequested; returns (sandbox, created). The env values
        are sealed into the gateway's own event and left out of the contract
        message (the host fetches them, see `env_for_host`)."""
        digest = self.secrets.digest(canonical(spec))
        sid = sandbox_uuid(org_id, idempotency_key)
        if spec.vcpus > limits.max_vcpus or spec.memory_mib > limits.max_memory_mib:
            raise Unprocessable(f"at most {limits.max_vcpus} vCPUs and {limits.max_memory_mib} "
                                "MiB per sandbox for this org")
        pin = self.fork_source(spec, org_id) or self.image_host(spec.image, org_id)
        return self._creates.submit(org_id, _Create(spec, op_id, traceparent, digest, sid, pin,
                                                    limits))

    def _create_batch(self, org_id: str, jobs: Sequence[_Create]
                      ) -> list[tuple[Sandbox, bool] | Exception]:
        """The org's concurrent creates in one transaction: one quota update for
        all of them. Retried whole while it races another instance."""
        def attempt() -> list[tuple[Sandbox, bool] | Exception]:
            quota = self._get(org_live_uuid(org_id)) or OrgLive(org_id)
            made: dict[uuid.UUID, Sandbox] = {}
            claims: dict[str, NameClaim] = {}
            out: list[tuple[Sandbox, bool] | Exception] = []
            for job in jobs:
                try:
                    out.append(self._admit(org_id, job, quota, made, claims))
                except UseCaseError as exc:
                    out.append(exc)
            if made:
                self._save(*made.values(), quota, *claims.values())
            return out
        return self.retry_on_conflict(attempt, Conflict(
            "concurrent requests for the same sandbox or name; retry"))

    def _admit(self, org_id: str, job: _Create, quota: OrgLive,
               made: dict[uuid.UUID, Sandbox], claims: dict[str, NameClaim]
               ) -> tuple[Sandbox, bool]:
        existing: Sandbox | None = made.get(job.sid)
        if existing is None:
            try:
                existing = self.find(str(job.sid), org_id)
            except NotFound:
                pass
        if existing is not None:
            if existing.request_hash != job.digest:
                raise IdempotencyMismatch("Idempotency-Key was used with a different body")
            return existing, False
        spec = job.spec
        if not quota.has_room(job.limits):
            raise TooMany(f"this org already has {job.limits.max_live} live sandboxes", 5)
        if spec.name:  # claimed before the quota moves: a refused name reserves nothing
            if spec.name in claims:
                raise Conflict(f"a live sandbox named {spec.name!r} already exists")
            claims[spec.name] = self._claim(org_id, spec.name, str(job.sid))
        msg = SandboxRequested(op_id=job.op_id, org_id=org_id, sandbox_id=str(job.sid),
                               spec=spec.model_copy(update={"env": {}}),
                               request_hash=job.digest, traceparent=job.traceparent,
                               pin_host_id=job.pin, secret_env=bool(spec.env))
        sb = Sandbox(msg.model_dump(mode="json"),
                     sealed_env=self.secrets.seal(spec.env) if spec.env else None)
        quota.reserve(str(job.sid))
        made[job.sid] = sb
        return sb, True

    def env_for_host(self, sandbox_id: str, org_id: str, host_id: str) -> dict[str, str]:
        """The env of a sandbox, for the host it is placed on and no other.
        NotFound for anyone else; OutOfOrder before the placement is known."""
        sb = self.find(sandbox_id, org_id)
        if sb.host_id is None and sb.live:
            raise OutOfOrder("not placed yet")
        if sb.host_id != host_id or sb.state in ("destroyed", "failed", "lost"):
            raise NotFound("no such sandbox on this host")
        return self.secrets.open(sb.sealed_env) if sb.sealed_env else {}

    def _claim(self, org_id: str, name: str, sandbox_id: str) -> NameClaim:
        claim = self._get(claim_uuid(org_id, name))
        if not isinstance(claim, NameClaim):
            return NameClaim(org_id, name, sandbox_id)
        if claim.holder and claim.holder != sandbox_id:
            try:
                holder = self.find(claim.holder, org_id)
                if holder.state not in ("destroyed", "failed", "lost"):
                    raise Conflict(f"a live sandbox named {name!r} already exists")
            except NotFound:
                pass
        claim.reclaim(sandbox_id)
        return claim

    def _check_source(self, msg: Envelope) -> None:
        """A host's fact counts only from the host that holds the placement (of
        the sandbox, or of the snapshot it reports on). ValueError: never."""
        if msg.via_host is None:
            return  # the control plane's own subject
        sb = self.find(getattr(msg, "sandbox_id", ""), None)
        holder = sb.host_id
        if isinstance(msg, SnapshotEvent):
            holder = self.find_snapshot(msg.snapshot_id, None).host_id or holder
        if holder is None:
            raise OutOfOrder(f"{msg.type} from {msg.via_host} before the placement is known")
        if holder != msg.via_host:
            raise ValueError(f"{msg.type} from host {msg.via_host}, but {holder} holds it")

    def ingest(self, msg: Envelope) -> bool:
        """Fold a fact from another service in; False if already known."""
        if msg.type in IMAGE_FACTS and isinstance(msg, ImageEvent):
            return self.ingest_image_fact(msg)
        if msg.type not in SANDBOX_FACTS and msg.type not in SNAPSHOT_FACTS:
            return False
        self._check_source(msg)
        if isinstance(msg, SnapshotEvent) and msg.type in SNAPSHOT_FACTS:
            return self.ingest_snapshot_fact(msg)
        sandbox_id = getattr(msg, "sandbox_id", "")
        first_start: list[tuple[str | None, float]] = []

        def attempt() -> bool:
            sb = self.find(sandbox_id, None)
            if sb.org_id != msg.org_id:
                raise ValueError("fact's org does not own the sandbox")
            doc = msg.model_dump(mode="json")
            if sb.has_seen(msg.event_id):
                return False
            missing = sb.missing_prerequisite(doc)
            if missing:
                raise OutOfOrder(f"{msg.type} waits for {missing}")
            if not sb.record_fact(doc, own=False):
                return False
            self._save(sb, *self._quota_after(sb, msg.type))
            if msg.type == "SandboxStarted" and sb.history_types.count("SandboxStarted") == 1:
                took = parse_time(doc["occurred_at"]) - parse_time(sb.requested_at)
                first_start[:] = [(sb.start_mode, max(0.0, took.total_seconds()))]
            return True
        changed = self.retry_on_conflict(attempt,
                                         Conflict("sandbox kept changing while ingesting"))
        if first_start and self.on_first_start is not None:
            self.on_first_start(*first_start[0])
        return changed

    def _quota_after(self, sb: Sandbox, fact: str) -> list[OrgLive]:
        """The org's live count after `fact`: an ended sandbox leaves it; one
        recovered counts again (even over the limit: it never stopped)."""
        if sb.state in ENDED and sb.state != "stopped":
            quota = self._get(org_live_uuid(sb.org_id))
            return [quota] if quota is not None and quota.release(str(sb.id)) else []
        if fact == "SandboxRecovered":
            quota = self._get(org_live_uuid(sb.org_id)) or OrgLive(sb.org_id)
            if str(sb.id) not in quota.live:
                quota.reserve(str(sb.id))
                return [quota]
        return []

    def _intent(self, sandbox_id: str, org_id: str | None,
                build: Callable[[Sandbox], Envelope | None]) -> Sandbox:
        def attempt() -> Sandbox:
            sb = self.find(sandbox_id, org_id)
            msg = build(sb)
            if msg is not None:
                sb.record_fact(msg.model_dump(mode="json"))
                self._save(sb)
            return sb
        return self.retry_on_conflict(attempt, Conflict("sandbox kept changing; retry"))

    def request_destroy(self, sandbox_id: str, org_id: str | None, op_id: str,
                        traceparent: str | None, reason: str = "user") -> Sandbox:
        return self._intent(sandbox_id, org_id, lambda sb: SandboxDestroyRequested(
            op_id=op_id, org_id=sb.org_id, sandbox_id=sandbox_id, traceparent=traceparent,
            reason=reason) if sb.can_destroy() else None)

    def _transition_intent(self, sandbox_id: str, org_id: str, op_id: str,
                           traceparent: str | None, cls: type, allowed: tuple[str, ...],
                           done: tuple[str, ...], pending: Callable[[Sandbox], bool]) -> Sandbox:
        """An intent valid in `allowed` states; a no-op where it is `done` or pending."""
        def build(sb: Sandbox) -> Envelope | None:
            if sb.state in done or (sb.state in allowed and pending(sb)):
                return None
            if sb.state not in allowed or sb.destroy_requested:
                raise Conflict(f"not possible while the sandbox is {sb.state}")
            return cls(op_id=op_id, org_id=sb.org_id, sandbox_id=sandbox_id,
                       traceparent=traceparent)
        return self._intent(sandbox_id, org_id, build)

    def request_pause(self, sandbox_id: str, org_id: str, op_id: str,
                      traceparent: str | None) -> Sandbox:
        return self._transition_intent(sandbox_id, org_id, op_id, traceparent,
                                       SandboxPauseRequested, ("running",), ("paused",),
                                       lambda sb: sb.pause_requested)

    def request_resume(self, sandbox_id: str, org_id: str, op_id: str,
                       traceparent: str | None) -> Sandbox:
        return self._transition_intent(sandbox_id, org_id, op_id, traceparent,
                                       SandboxResumeRequested, ("paused",), ("running",),
                                       lambda sb: sb.resume_requested)

    def request_start(self, sandbox_id: str, org_id: str, op_id: str,
                      traceparent: str | None) -> Sandbox:
        return self._transition_intent(sandbox_id, org_id, op_id, traceparent,
                                       SandboxStartRequested, ("stopped",),
                                       ("starting", "running", "requested", "scheduled"),
                                       lambda sb: False)

    def extend_ttl(self, sandbox_id: str, org_id: str, ttl_seconds: int, op_id: str,
                   traceparent: str | None, now: datetime) -> Sandbox:
        """The lease now ends `ttl_seconds` from `now`; moves warning and deadline."""
        def build(sb: Sandbox) -> Envelope:
            if not sb.live or sb.destroy_requested:
                raise Conflict(f"cannot extend a sandbox in state {sb.state!r}")
            return SandboxTtlExtended(op_id=op_id, org_id=sb.org_id, sandbox_id=sandbox_id,
                                      traceparent=traceparent, ttl_seconds=ttl_seconds,
                                      expires_at=now + timedelta(seconds=ttl_seconds))
        return self._intent(sandbox_id, org_id, build)

    def expire(self, sandbox_id: str, now: datetime, warn_s: float) -> str | None:
        """Warn before the deadline, destroy at it; idempotent across instances."""
        op_id = "op_ttl_" + sandbox_id.replace("-", "")[:16]
        outcome: dict[str, str | None] = {"did": None}

        def build(sb: Sandbox) -> Envelope | None:
            due = outcome["did"] = sb.expiry_due(now, warn_s)
            if due == "destroy":
                return SandboxDestroyRequested(op_id=op_id, org_id=sb.org_id,
                                               sandbox_id=sandbox_id, reason="ttl_expired")
            if due == "warn":
                return SandboxExpiring(op_id=op_id, org_id=sb.org_id, sandbox_id=sandbox_id,
                                       expires_at=parse_time(sb.expires_at))
            return None
        self._intent(sandbox_id, None, build)
        return outcome["did"]

    def request_stop(self, sandbox_id: str, org_id: str, op_id: str,
                     traceparent: str | None) -> Sandbox:
        def build(sb: Sandbox) -> Envelope | None:
            if sb.state in ("stopping", "stopped"):
                return None
            if not sb.can_stop():
                raise Conflict(f"cannot stop a sandbox in state {sb.state!r}")
            return SandboxStopRequested(op_id=op_id, org_id=sb.org_id, sandbox_id=sandbox_id,
                                        traceparent=traceparent)
        return self._intent(sandbox_id, org_id, build)

    def history(self, sandbox_id: str, org_id: str) -> list[dict]:
        sb = self.find(sandbox_id, org_id)
        return [doc for e in self.repository.event_store.get(sb.id)
                if (doc := getattr(e, "envelope", None) or getattr(e, "fact", None))]
