"""python -m services.billing: meter sandbox run time into UsageRecorded."""
from __future__ import annotations

import asyncio

from common.service import run

from .bootstrap import bootstrap
from .entrypoints.jobs import jobs
from .settings import BillingSettings

if __name__ == "__main__":
    asyncio.run(run("billing", BillingSettings(), bootstrap, jobs))
