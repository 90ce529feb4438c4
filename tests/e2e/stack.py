"""Helpers for driving a DevStack through REST and reading its streams."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import nats


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


def read_stream(nats_url: str, subject: str) -> list[tuple[str, dict, dict]]:
    """(subject, body, headers) of every message on `subject`, oldest first."""
    async def go():
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        sub = await js.subscribe(subject, ordered_consumer=True)
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
