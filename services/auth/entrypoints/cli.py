"""Command line: `serve` (default) and `bootstrap --org NAME [--json]`."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys

from common.service import install_stop_handlers

from ..application.provision import provision
from ..bootstrap import build_offline
from ..settings import AuthSettings
from .server import serve


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m services.auth")
    sub = p.add_subparsers(dest="cmd")
    sub.add_parser("serve", help="run the auth service (default)")
    b = sub.add_parser("bootstrap", help="create an org, its key, an admin key, a host token")
    b.add_argument("--org", required=True)
    b.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


async def bootstrap_cmd(settings: AuthSettings, org: str) -> dict[str, str]:
    app = build_offline(settings)
    try:
        await app.store.create_schema()
        return (await provision(app.service, org)).as_dict()
    finally:
        await app.store.close()


async def serve_cmd(settings: AuthSettings) -> None:
    stop = asyncio.Event()
    install_stop_handlers(stop)
    await serve(settings, stop)


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
    asyncio.run(serve_cmd(settings))
    return 0
