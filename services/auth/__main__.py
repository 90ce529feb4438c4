"""python -m services.auth [serve | bootstrap --org NAME --json]"""
from __future__ import annotations

import sys

from common.logging import configure_logging

from .entrypoints.cli import run
from .settings import AuthSettings


def main() -> int:
    settings = AuthSettings()
    configure_logging("auth", settings.log_level)
    return run(sys.argv[1:], settings)


if __name__ == "__main__":
    sys.exit(main())
