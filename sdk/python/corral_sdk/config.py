"""Where the API URL and key come from: explicit args > env > .corral/dev.env."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

DEV_ENV = Path(".corral") / "dev.env"


def find_dev_env(start: Path | None = None) -> Path | None:
    """The nearest `.corral/dev.env` in `start` (default cwd) or its parents."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / DEV_ENV).is_file():
            return d / DEV_ENV
    return None


def read_env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.removeprefix("export ").split("=", 1)
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
            v = v[1:-1]
        out[k.strip()] = v
    return out


def setting(key: str, explicit: str | None = None, cwd: Path | None = None) -> str | None:
    """One setting by the precedence rule; None if found nowhere."""
    if explicit:
        return explicit
    if os.environ.get(key):
        return os.environ[key]
    path = find_dev_env(cwd)
    return read_env_file(path).get(key) or None if path else None


@dataclass(frozen=True)
class Config:
    api_url: str
    api_key: str

    @classmethod
    def resolve(cls, api_url: str | None = None, api_key: str | None = None,
                cwd: Path | None = None) -> Config:
        url = setting("CORRAL_API_URL", api_url, cwd)
        key = setting("CORRAL_API_KEY", api_key, cwd)
        missing = [n for n, v in (("CORRAL_API_URL", url), ("CORRAL_API_KEY", key)) if not v]
        if missing:
            raise ConfigError(
                f"{' and '.join(missing)} not set: pass api_url=/api_key=, export "
                f"{missing[0]}, or run `corral up` so .corral/dev.env exists here or in a parent")
        assert url is not None and key is not None
        return cls(url.rstrip("/"), key)
