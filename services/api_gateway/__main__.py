"""`python -m services.api_gateway`: the REST edge."""
from __future__ import annotations

import asyncio

from common.service import run

from .bootstrap import bootstrap
from .entrypoints.jobs import jobs
from .settings import GatewaySettings

if __name__ == "__main__":
    asyncio.run(run("api_gateway", GatewaySettings(), bootstrap, jobs))
