"""`corral`: the command line over the REST API (sandboxes, snapshots, images,
events). A server install adds its own commands (up, doctor, secrets, the
built-in guest image) through the `corral.cli` entry point group."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import CorralError
from . import events, images, processes, sandbox, snapshots

Parsers = dict[str, argparse.ArgumentParser]
Plugin = Callable[[Any, Parsers], None]  # (subparsers, parsers by name)


def _plugins() -> list[Plugin]:
    """What installed packages register under the `corral.cli` entry points."""
    from importlib.metadata import entry_points
    eps: Any = entry_points()
    group = (eps.select(group="corral.cli") if hasattr(eps, "select")
             else eps.get("corral.cli", []))  # Python 3.9 returns a dict
    return [ep.load() for ep in group]


def build_parser(plugins: Sequence[Plugin] | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="corral", description="Corral sandboxes from the command line. The API URL and "
        "key come from CORRAL_API_URL and CORRAL_API_KEY, else the nearest .corral/dev.env.")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    parsers: Parsers = {}
    sandbox.register(sub, parsers)
    processes.register(sub, parsers)
    snapshots.register(sub, parsers)
    images.register(sub, parsers)
    events.register(sub, parsers)
    for plugin in _plugins() if plugins is None else plugins:
        plugin(sub, parsers)
    return ap


def run(a: argparse.Namespace) -> int:
    """Typed errors become one line on stderr (exit 1); Ctrl-C exits 130 quietly."""
    try:
        return int(a.fn(a) or 0)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except CorralError as e:
        print(f"corral: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `corral sandbox list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def main(argv: list[str] | None = None, plugins: Sequence[Plugin] | None = None) -> int:
    return run(build_parser(plugins).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
