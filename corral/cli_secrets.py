"""`corral secrets`: the bus credentials of a deployment (compose, Nomad).

    corral secrets init infra/secrets            # once: CA, nats.conf, one env file per service
    corral secrets rotate infra/secrets gateway  # then restart auth and the gateway
"""
from __future__ import annotations

import argparse
import sys

from corral_sdk.errors import ConfigError


def cmd_init(a: argparse.Namespace) -> int:
    from pathlib import Path

    from common.deploy import Layout, new_secrets_key, write_bundle
    from common.natsconf import BusSecrets

    d = Path(a.dir)
    if (d / "bus-secrets.json").exists() and not a.force:
        raise ConfigError(f"{d} already holds bus secrets: use `rotate`, or --force to replace "
                          "all of them (every service must then be restarted)")
    layout = Layout(nats_url=a.nats_url, nats_hosts=tuple(a.nats_host), tls=not a.no_tls,
                    nats_tls_dir=a.nats_tls_dir, service_ca=a.service_ca)
    write_bundle(d, BusSecrets.generate(), layout, secrets_key=new_secrets_key())
    print(f"wrote {d}: nats.conf, tls/, " + ", ".join(f"{s}.env" for s in
          ("auth", "gateway", "scheduler", "billing", "ops")), file=sys.stderr)
    return 0


def cmd_rotate(a: argparse.Namespace) -> int:
    from pathlib import Path

    from common.deploy import load_layout, rotate, write_bundle
    from common.natsconf import BusSecrets

    d = Path(a.dir)
    path = d / "bus-secrets.json"
    if not path.exists():
        raise ConfigError(f"{d} holds no bus secrets: run `corral secrets init {d}` first")
    try:
        fresh = rotate(BusSecrets.from_json(path.read_text()), a.principal)
    except KeyError as e:
        raise ConfigError(str(e)) from None
    write_bundle(d, fresh, load_layout(d), new_tls=False)
    who = {"issuer": "reload NATS (nats-server --signal reload), then restart auth",
           "auth": "reload NATS, then restart auth", "system": "reload NATS, then restart auth"}
    print(f"rotated {a.principal}: {who.get(a.principal, f'restart auth, then {a.principal}')}",
          file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("secrets", help="bus credentials of a deployment")
    s = p.add_subparsers(dest="secrets_cmd", required=True)
    i = s.add_parser("init", help="generate every bus credential and the NATS config")
    i.add_argument("dir")
    i.add_argument("--nats-url", default="tls://nats:4222", help="as the services reach NATS")
    i.add_argument("--nats-host", action="append", default=["nats", "localhost", "127.0.0.1"],
                   help="a name or address in the server certificate (repeatable)")
    i.add_argument("--nats-tls-dir", default="/etc/nats/tls",
                   help="where NATS finds server.pem and server-key.pem")
    i.add_argument("--service-ca", default="/etc/corral/tls/ca.pem",
                   help="where the services find ca.pem")
    i.add_argument("--no-tls", action="store_true", help="only for a bus on loopback")
    i.add_argument("--force", action="store_true")
    i.set_defaults(fn=cmd_init)
    r = s.add_parser("rotate", help="new credentials for one principal")
    r.add_argument("dir")
    r.add_argument("principal", choices=["gateway", "scheduler", "billing", "ops", "auth",
                                         "system", "issuer"])
    r.set_defaults(fn=cmd_rotate)
