"""python -m services.billing: meter sandbox run time into UsageRecorded."""
from __future__ import annotations

import asyncio
import sys

from common.logging import configure_logging
from common.service import install_stop_handlers

from .entrypoints.server import serve
from .settings import BillingSettings


async def _main(settings: BillingSettings) -> None:
    stop = asyncio.Event()
    install_stop_handlers(stop)
    await serve(settings, stop)


def main() -> int:
    settings = BillingSettings()
    configure_logging("billing", settings.log_level)
    asyncio.run(_main(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
