"""CLI: python -m services.host_agent.adapters.guest_image build|path|prune
[--name N] [--rebuild]"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from .builder import ensure_image, manifest, prune


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m services.host_agent.adapters.guest_image")
    ap.add_argument("command", choices=["build", "path", "prune"])
    ap.add_argument("--name", default="default")
    ap.add_argument("--rebuild", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    t0 = time.monotonic()
    if a.command == "prune":
        print(json.dumps({"removed": [str(p) for p in prune(a.name)]}, indent=2))
        return 0
    p = ensure_image(a.name, rebuild=a.rebuild and a.command == "build")
    m = manifest(p)
    print(json.dumps({"name": a.name, "digest": p.digest, "kernel": str(p.kernel),
                      "initrd": str(p.initrd), "rootfs": str(p.rootfs),
                      "sizes": m["sizes"], "build_s": m["build_s"],
                      "elapsed_s": round(time.monotonic() - t0, 2)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
