"""Helpers for driving a DevStack through REST and reading its streams."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import nats
from nats.js.api import ConsumerConfig

from corral.devstack import DevStack


class Api:
    def __init__(self, base: str, key: str):
        self.c = httpx.Client(base_url=base, timeout=60,
                              headers={"Authorization": f"Bearer {key}"})

    def __getattr__(self, name):  # get/post/delete/put
        return getattr(self.c, name)

    def wait_state(self, sid: str, states: tuple[str, ...], timeout_s: float = 60) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            doc = self.c.get(f"/v1/sandboxes/{sid}").json()
            if doc.get("state") in states:
                return doc
            if time.monotonic() > deadline:
                raise AssertionError(f"{sid} stuck in {doc.get('state')}, wanted {states}")
            time.sleep(0.05)


def read_stream(stack: DevStack, *subjects: str) -> list[tuple[str, dict, dict]]:
    """(subject, body, headers) of every message on `subjects` (one stream),
    oldest first, as the bus's read-only "ops" principal."""
    async def go():
        nc = await nats.connect(stack.nats_url, **stack.bus_login("ops"))
        js = nc.jetstream()
        sub = await js.subscribe(subjects[0], ordered_consumer=True,
                                 config=ConsumerConfig(filter_subjects=list(subjects)))
        out = []
        while True:
            try:
                m = await sub.next_msg(timeout=1.0)
            except Exception:  # noqa: BLE001 - timeout: caught up
                break
            out.append((m.subject, json.loads(m.data), dict(m.headers or {})))
        await nc.close()
        return out
    return asyncio.run(go())
