"""The server's commands of `corral`: up, doctor, secrets, the built-in guest image."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _module(mod: str, *args: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.call([sys.executable, "-m", mod, *args], env=env, cwd=REPO)


def cmd_builtin_image(a: argparse.Namespace) -> int:
    """`corral image build` without -t: this host's built-in guest image (what
    `make image` builds)."""
    args = ["build", "--name", a.name] + (["--rebuild"] if a.rebuild else [])
    return _module("services.host_agent.adapters.guest_image", *args)


def cmd_doctor(a: argparse.Namespace) -> int:
    return _module("services.host_agent.adapters.doctor", *(["--json"] if a.json else []))


def cmd_up(a: argparse.Namespace) -> int:
    from .devstack import DevStack

    state = Path(a.state_dir).resolve()
    if a.driver == "qemu" and _module("services.host_agent.adapters.guest_image", "build") != 0:
        print("guest image build failed; `corral doctor` says what is missing", file=sys.stderr)
        return 1
    stack = DevStack(state, http_port=a.port, driver=a.driver, store=a.store,
                     settings=DevStack.settings_from(dict(os.environ)))
    stopping = {"now": False}

    def _stop(*_: object) -> None:
        stopping["now"] = True
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        t0 = time.monotonic()
        stack.start(timeout_s=180)
        stack.write_env_file(state / "dev.env")
        c = stack.creds
        assert c is not None
        print(f"\nCorral is up in {time.monotonic() - t0:.1f}s "
              f"(driver={a.driver}, store={a.store})\n"
              f"  CORRAL_API_URL={stack.api_url}\n  CORRAL_API_KEY={c.api_key}\n"
              f"  CORRAL_ADMIN_KEY={c.admin_key}\n"
              f"bus: {stack.nats_url} (authenticated: {state / 'bus-secrets.json'})\n"
              f"written to {state / 'dev.env'}; logs in {state / 'logs'}\n"
              f"try: curl -s -X POST -H \"Authorization: Bearer $CORRAL_API_KEY\" "
              f"\"$CORRAL_API_URL/v1/sandboxes?wait=true\"\nCtrl-C stops everything.", flush=True)
        while not stopping["now"]:
            for name, p in stack.procs.items():
                if p.poll() is not None:
                    print(f"{name} exited ({p.returncode}); restarting", file=sys.stderr)
                    stack.start_service(name)
            time.sleep(0.5)
    except RuntimeError as e:
        print(f"corral up failed: {e}", file=sys.stderr)
        return 1
    finally:
        print("stopping...", file=sys.stderr)
        stack.stop()
    return 0


def register(sub: argparse._SubParsersAction, parsers: dict) -> None:
    """The server's commands, added to corral-sdk's `corral` (entry point `corral.cli`)."""
    up = sub.add_parser("up", help="run the whole platform locally")
    up.add_argument("--state-dir", default=os.environ.get("CORRAL_STATE_DIR", ".corral"))
    up.add_argument("--port", type=int, default=int(os.environ.get("CORRAL_HTTP_PORT", "8080")))
    up.add_argument("--driver", choices=["qemu", "fake"],
                    default=os.environ.get("CORRAL_DRIVER", "qemu"))
    up.add_argument("--store", default=os.environ.get("CORRAL_STORE", "sqlite"))
    up.set_defaults(fn=cmd_up)
    doc = sub.add_parser("doctor", help="check this host can run microVMs")
    doc.add_argument("--json", action="store_true")
    doc.set_defaults(fn=cmd_doctor)
    b = parsers["image build"]
    b.description = ("With -t NAME DIR: build your image from DIR's Dockerfile through the "
                     "API. Without -t: build this host's built-in guest image.")
    b.add_argument("--name", default="default", help="built-in image to build (no -t)")
    b.add_argument("--rebuild", action="store_true", help="rebuild the built-in image (no -t)")
    b.set_defaults(builtin=cmd_builtin_image)
    from . import cli_secrets
    cli_secrets.register(sub)


def main(argv: list[str] | None = None) -> int:
    """`python -m corral`: corral-sdk's command line with the server's commands,
    whether or not the server package's entry points are installed."""
    from corral_sdk.cli import main as sdk_main
    return sdk_main(argv, plugins=[register])


if __name__ == "__main__":
    sys.exit(main())
