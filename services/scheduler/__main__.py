"""`python -m services.scheduler`: places sandboxes on heartbeating hosts."""
from __future__ import annotations

import asyncio

from common.service import run

from .bootstrap import bootstrap
from .entrypoints.jobs import jobs
from .settings import SchedulerSettings

if __name__ == "__main__":
    asyncio.run(run("scheduler", SchedulerSettings(), bootstrap, jobs))
