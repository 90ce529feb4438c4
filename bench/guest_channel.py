"""A hostile guest against the real AgentClient, printing JSON: a flood that
ignores output_cap (host RSS, bytes delivered, when it is cut off) and a
guest that never reads (a 4 MiB put with timeout=2, the next exec, close).

    python bench/guest_channel.py
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guest import protocol as P
from services.host_agent.adapters.qemu.agent_client import AgentClient
from services.host_agent.application.ports import ExecChunk, ExecRequest

Peer = asyncio.StreamReader


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _flood(tmp: Path) -> dict:
    sent = [0]

    async def guest(r: Peer, w: asyncio.StreamWriter) -> None:
        dec = P.Decoder()
        while data := await r.read(1 << 16):
            for h, _ in dec.feed(data):
                if h.get("op") != "exec":
                    continue
                chunk = os.urandom(64 << 10)
                try:
                    while True:
                        w.write(P.encode({"id": h["id"], "type": "out", "stream": "stdout"},
                                         chunk))
                        sent[0] += len(chunk)
                        await w.drain()
                except (ConnectionError, OSError):
                    return
    server = await asyncio.start_unix_server(guest, str(tmp / "flood.sock"))
    client = await AgentClient.connect(str(tmp / "flood.sock"))
    before, peak, got = rss_mib(), [0.0], [0]

    async def on_chunk(c: ExecChunk) -> None:
        got[0] += len(c.data)

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], rss_mib())
            await asyncio.sleep(0.05)
    sampler = asyncio.ensure_future(sample())
    t0 = time.monotonic()
    try:
        await client.exec(ExecRequest(["yes"], timeout_s=18, output_cap=1 << 20), on_chunk)
        ended = "exit"
    except Exception as e:  # noqa: BLE001 - how it ended is the result
        ended = type(e).__name__
    took = time.monotonic() - t0
    sampler.cancel()
    await client.close()
    server.close()
    return {"output_cap": 1 << 20, "delivered_bytes": got[0],
            "guest_sent_mib": round(sent[0] / 2**20), "ended_with": ended,
            "ended_after_s": round(took, 2), "rss_before_mib": round(before, 1),
            "rss_peak_mib": round(peak[0], 1), "rss_growth_mib": round(peak[0] - before, 1)}


async def _deaf(tmp: Path) -> dict:
    async def guest(r: Peer, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(60)  # accepts, never reads
    server = await asyncio.start_unix_server(guest, str(tmp / "deaf.sock"))
    client = await AgentClient.connect(str(tmp / "deaf.sock"))
    out: dict = {}
    for name, call in (
            ("put_4mib_timeout_2s", lambda: client.request({"op": "put", "path": "/x"},
                                                           b"x" * (4 << 20), timeout=2)),
            ("exec_sync_after", lambda: client.exec(ExecRequest(["sync"], timeout_s=10)))):
        t0 = time.monotonic()
        try:
            await call()
            ended = "answered"
        except Exception as e:  # noqa: BLE001 - how it ended is the result
            ended = type(e).__name__
        out[name] = {"ended_with": ended, "after_s": round(time.monotonic() - t0, 3)}
    t0 = time.monotonic()
    await asyncio.wait_for(client.close(), 5)
    out["close_s"] = round(time.monotonic() - t0, 3)
    server.close()
    return out


async def main() -> int:
    with tempfile.TemporaryDirectory(prefix="gc-") as tmp:
        result = {"flood": await _flood(Path(tmp)), "deaf_guest": await _deaf(Path(tmp))}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
