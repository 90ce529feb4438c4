"""Command line: `serve` (default) and `bootstrap --org NAME [--json]`."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys

from common.service import run as run_service

from ..application.provision import provision
from ..bootstrap import bootstrap, offline
from ..settings import AuthSettings
from .jobs import jobs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m services.auth")
    sub = p.add_subparsers(dest="cmd")
    sub.add_parser("serve", help="run the auth service (default)")
    b = sub.add_parser("bootstrap", help="create an org, its key, an admin key, a host token")
    b.add_argument("--org", required=True)
    b.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


async def bootstrap_cmd(settings: AuthSettings, org: str) -> dict[str, str]:
    store, service = offline(settings)
    try:
        await store.create_schema()
        return (await provision(service, org)).as_dict()
    finally:
        await store.close()


def run(argv: list[str] | None, settings: AuthSettings) -> int:
    args = parse_args(argv)
    if args.cmd == "bootstrap":
        out = asyncio.run(bootstrap_cmd(settings, args.org))
        if args.json:
            print(json.dumps(out))
        else:
            print("\n".join(f"{k.upper()}={v}" for k, v in out.items()))
        sys.stdout.flush()
        return 0
    asyncio.run(run_service("auth", settings, bootstrap, jobs))
    return 0
