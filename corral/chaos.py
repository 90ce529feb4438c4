"""Chaos on a FAKE-driver stack: a burst of creates and deletes while services
and the NATS server are killed -9 (and restarted: NATS with its own port and
store), then quiescence, and a count of what was lost and what became a
ghost: a VM process no live sandbox owns, or a live sandbox with no process.

Shared by bench/chaos.py and the end-to-end outage tests.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats

from services.host_agent.adapters.fake_vmm import MARK

from .devstack import SERVICES, DevStack

LIVE = frozenset({"starting", "running", "paused"})
SETTLED = frozenset({"running", "paused", "destroyed", "lost", "failed", "stopped"})
DEFAULT_HEARTBEAT_S = 1.0


def chaos_env(heartbeat_s: float = DEFAULT_HEARTBEAT_S) -> dict[str, str]:
    """Quotas and capacity out of the way; a quick heartbeat and inventory."""
    return {"CORRAL_QUOTA_CREATES_PER_MINUTE": "1000000", "CORRAL_QUOTA_MAX_LIVE": "1000000",
            "CORRAL_MAX_SANDBOXES": "100000", "CORRAL_CAPACITY_VCPUS": "100000",
            "CORRAL_CAPACITY_MEMORY_MIB": "100000000",
            "CORRAL_HEARTBEAT_INTERVAL_S": str(heartbeat_s),
            "CORRAL_INVENTORY_INTERVAL_S": str(max(1.0, 2 * heartbeat_s))}


def fake_vm_sandboxes(state_dir: Path) -> set[str]:
    """Sandbox ids of the FAKE driver's live VM processes under `state_dir`."""
    want = str(Path(state_dir).resolve())
    found: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                parts = f.read().split(b"\0")
        except OSError:
            continue
        args = [p.decode(errors="replace") for p in parts if p]
        if MARK in args and len(args) >= 2 and args[-2].startswith(want):
            found.add(args[-1])
    return found


@dataclass
class Outcome:
    accepted: int = 0
    deleted: int = 0
    states: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    ghost_processes: list[str] = field(default_factory=list)  # a VM no live sandbox owns
    ghost_sandboxes: list[str] = field(default_factory=list)  # live, with no VM
    unsettled: list[str] = field(default_factory=list)
    settle_s: float = 0.0
    kills: list[dict] = field(default_factory=list)
    hosts_lost: int = 0  # HostLost events: none is right unless a host agent was down

    def as_dict(self) -> dict:
        return {"accepted": self.accepted, "deleted": self.deleted,
                "running": self.states.get("running", 0),
                "destroyed": self.states.get("destroyed", 0), "lost": self.lost,
                "failed": self.states.get("failed", 0), "states": self.states,
                "ghosts": len(self.ghost_processes) + len(self.ghost_sandboxes),
                "ghost_processes": self.ghost_processes[:20],
                "ghost_sandboxes": self.ghost_sandboxes[:20],
                "unsettled": len(self.unsettled), "settle_s": round(self.settle_s, 2),
                "hosts_lost": self.hosts_lost, "kills": self.kills}


class Chaos:
    def __init__(self, stack: DevStack, api_key: str, deadline_s: float = 120.0):
        self.st = stack
        self.key = api_key
        self.deadline_s = deadline_s
        self.c = httpx.Client(base_url=stack.api_url, timeout=30,
                              headers={"Authorization": f"Bearer {api_key}"})
        self.kills: list[dict] = []
        self._t0: float | None = None

    # -- the burst: a client that retries as an SDK would (same idempotency key)
    def create(self) -> str:
        key = "chaos-" + secrets.token_hex(8)
        r = self._until_accepted("create", lambda: self.c.post(
            "/v1/sandboxes", json={"ttl_seconds": 3600}, headers={"Idempotency-Key": key}))
        return str(r.json()["id"])

    def delete(self, sid: str) -> None:
        self._until_accepted("delete", lambda: self.c.delete(f"/v1/sandboxes/{sid}"))

    def _until_accepted(self, what: str, call: Callable[[], httpx.Response]) -> httpx.Response:
        """Retry through outages (no answer, 5xx, 409 while it settles, 429)
        until a 2xx, as an SDK would; any other refusal is an error."""
        end = time.monotonic() + self.deadline_s
        while True:
            try:
                r = call()
                if 200 <= r.status_code < 300:
                    return r
                if r.status_code < 500 and r.status_code not in (409, 429):
                    raise RuntimeError(f"{what} refused: {r.status_code} {r.text[:300]}")
            except httpx.HTTPError:
                pass
            if time.monotonic() > end:
                raise RuntimeError(f"{what} not accepted before the deadline")
            time.sleep(0.2)

    def burst(self, n: int, concurrency: int = 8, delete_every: int = 5,
              during: list[tuple[float, str, float]] | None = None
              ) -> tuple[list[str], list[str]]:
        """`n` creates (every `delete_every`-th deleted right after) while
        `during` kills run: (seconds after the start, target, seconds down).
        Kills and restarts run on this (the calling) thread: a service dies
        with the thread that started it (PR_SET_PDEATHSIG)."""
        def one(i: int) -> tuple[str, bool]:
            sid = self.create()
            if delete_every and i % delete_every == delete_every - 1:
                self.delete(sid)
                return sid, True
            return sid, False
        t0 = self._t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            futures = [pool.submit(one, i) for i in range(n)]
            for at_s, targets, down_s in _grouped(during or []):
                time.sleep(max(0.0, t0 + at_s - time.monotonic()))
                self.kill(targets, down_s)
            done = [f.result() for f in futures]
        self.burst_s = time.monotonic() - t0
        return [s for s, _ in done], [s for s, d in done if d]

    def kill(self, targets: list[str], down_s: float) -> None:
        """SIGKILL each target ("nats" or a service name), restart them all
        `down_s` later (NATS first, then services in start order)."""
        t = time.monotonic()
        for target in targets:
            if target == "nats":
                assert self.st.nats is not None
                self.st.nats.kill()
            else:
                self.st.kill(target, signal.SIGKILL)
        time.sleep(down_s)
        if "nats" in targets:
            assert self.st.nats is not None
            self.st.nats.start()
        for target in SERVICES:
            if target in targets:
                self.st.start_service(target)
        self.kills.append({"targets": targets, "down_s": down_s,
                           "at_s": round(t - self._t0, 2) if self._t0 else None,
                           "took_s": round(time.monotonic() - t, 2)})

    # -- quiescence -------------------------------------------------------------
    def states(self) -> dict[str, str]:
        out: dict[str, str] = {}
        cursor = None
        while True:
            params = {"limit": 500, **({"cursor": cursor} if cursor else {})}
            doc = self.c.get("/v1/sandboxes", params=params).raise_for_status().json()
            out.update({x["id"]: x["state"] for x in doc["items"]})
            cursor = doc.get("next_cursor")
            if not cursor:
                return out

    def settle(self, ids: list[str], deleted: list[str], timeout_s: float = 180,
               stable_s: float = 5.0) -> Outcome:
        """Wait until every sandbox is settled, deleted ones are gone, VM
        processes match live sandboxes, and all of that holds for `stable_s`."""
        t0 = time.monotonic()
        want_gone = set(deleted)
        stable_since: float | None = None
        out = Outcome()
        while True:
            try:
                states = self.states()
            except httpx.HTTPError:
                states = {}
            procs = fake_vm_sandboxes(self.st.state_dir)
            out = self._outcome(ids, deleted, states, procs)
            quiet = (not out.unsettled and not out.ghost_processes and not out.ghost_sandboxes
                     and all(states.get(s) in ("destroyed", "lost", "failed")
                             for s in want_gone))
            now = time.monotonic()
            if quiet:
                stable_since = stable_since or now
                if now - stable_since >= stable_s:
                    out.settle_s = stable_since - t0
                    break
            else:
                stable_since = None
            if now - t0 > timeout_s:
                out.settle_s = now - t0
                break
            time.sleep(0.5)
        out.hosts_lost = self.host_losses()
        return out

    def host_losses(self) -> int:
        """How many HostLost events the host stream holds."""
        async def go() -> int:
            nc = await nats.connect(self.st.nats_url, **self.st.bus_login("ops"))
            try:
                info = await nc.jetstream().stream_info(
                    "CORRAL_HOST", subjects_filter="corral.evt.host.*.HostLost")
                return sum((info.state.subjects or {}).values())
            finally:
                await nc.close()
        return asyncio.run(go())

    def _outcome(self, ids: list[str], deleted: list[str], states: dict[str, str],
                 procs: set[str]) -> Outcome:
        mine = {s: states.get(s, "missing") for s in ids}
        counts: dict[str, int] = {}
        for s in mine.values():
            counts[s] = counts.get(s, 0) + 1
        live = {s for s, st in mine.items() if st in LIVE}
        return Outcome(
            accepted=len(ids), deleted=len(deleted), states=counts,
            lost=counts.get("lost", 0),
            ghost_processes=sorted(procs - live),
            ghost_sandboxes=sorted(s for s in live - procs if mine[s] != "starting"),
            unsettled=sorted(s for s, st in mine.items() if st not in SETTLED),
            kills=list(self.kills))


def _grouped(during: list[tuple[float, str, float]]) -> list[tuple[float, list[str], float]]:
    """Kills at the same moment for the same time, together, in time order."""
    out: dict[tuple[float, float], list[str]] = {}
    for at_s, target, down_s in sorted(during):
        out.setdefault((at_s, down_s), []).append(target)
    return [(at_s, targets, down_s) for (at_s, down_s), targets in sorted(out.items())]
