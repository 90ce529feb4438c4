"""`corral snapshot ...`: take, list, show, fork, rm."""
from __future__ import annotations

import argparse
import json

from ..snapshot import Snapshot
from .sandbox import _pairs, _print_json, _sandbox, progress


def _find(ref: str) -> Snapshot:
    """By id, else by name (the newest of that name)."""
    hits = [s for s in Snapshot.list() if ref in (s.id, s.name)]
    if not hits:
        return Snapshot.get(ref)  # raises NotFoundError with the server's words
    return hits[0]


def cmd_take(a: argparse.Namespace) -> int:
    sb = _sandbox(a.sandbox)
    with progress(f"snapshotting {sb.id}"):
        snap = sb.snapshot(a.name, ttl_seconds=a.ttl, timeout=a.timeout)
    _print_json(snap.info) if a.json else print(snap.id)
    return 0


def cmd_list(a: argparse.Namespace) -> int:
    snaps = Snapshot.list()
    if a.json:
        _print_json([s.info for s in snaps])
        return 0
    for s in snaps:
        size = (s.info.get("size_bytes") or 0) >> 20
        print(f"{s.id}  {s.name:<24} {s.state:<8} {size:>6} MiB  from {s.sandbox_id}  "
              f"{s.info.get('created_at', '')}")
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    _print_json(_find(a.snapshot).info)
    return 0


def cmd_fork(a: argparse.Namespace) -> int:
    snap = _find(a.snapshot)
    with progress(f"forking {a.count} from {snap.name}"):
        boxes = snap.fork(a.count, ttl_seconds=a.ttl, env=_pairs(a.env, "--env"),
                          metadata=_pairs(a.meta, "--meta"), egress=a.egress,
                          timeout=a.timeout)
    for b in boxes:
        print(json.dumps(b.info, sort_keys=True) if a.json else f"{b.id} {b.state}")
    return 0 if all(b.state == "running" for b in boxes) else 1


def cmd_rm(a: argparse.Namespace) -> int:
    for ref in a.snapshot:
        snap = _find(ref).delete()
        print(f"{snap.id} {snap.state}")
    return 0


def register(sub: argparse._SubParsersAction, parsers: dict) -> None:
    p = parsers["snapshot"] = sub.add_parser(
        "snapshot", aliases=["snap"], help="snapshots of running sandboxes, and forks")
    s = p.add_subparsers(dest="snapshot_cmd", required=True)
    t = s.add_parser("take", help="snapshot a running sandbox; prints the snapshot's id")
    t.add_argument("sandbox", help="sandbox id or name")
    t.add_argument("name", help="the snapshot's name (a DNS label)")
    t.add_argument("--ttl", type=int, help="delete it this many seconds after it is taken")
    t.add_argument("--timeout", type=float, default=120)
    t.add_argument("--json", action="store_true")
    t.set_defaults(fn=cmd_take)
    ls = s.add_parser("list", aliases=["ls"], help="your snapshots")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(fn=cmd_list)
    sh = s.add_parser("show", help="one snapshot as JSON")
    sh.add_argument("snapshot", help="id or name")
    sh.set_defaults(fn=cmd_show)
    f = s.add_parser("fork", help="new sandboxes from a snapshot; prints their ids")
    f.add_argument("snapshot", help="id or name")
    f.add_argument("-n", "--count", type=int, default=1)
    f.add_argument("--ttl", type=int, default=900, help="seconds")
    f.add_argument("--env", action="append", metavar="K=V")
    f.add_argument("--meta", action="append", metavar="K=V")
    f.add_argument("--egress", action="store_true", help="allow outbound network")
    f.add_argument("--timeout", type=float, default=120)
    f.add_argument("--json", action="store_true", help="one sandbox per line, as JSON")
    f.set_defaults(fn=cmd_fork)
    rm = s.add_parser("rm", help="delete snapshots (by id or name)")
    rm.add_argument("snapshot", nargs="+")
    rm.set_defaults(fn=cmd_rm)
