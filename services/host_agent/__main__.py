"""`python -m services.host_agent [cleanup]`: runs this host's sandboxes."""
from __future__ import annotations

import asyncio
import sys

from common.service import run

from .bootstrap import bootstrap
from .entrypoints.cleanup import cleanup
from .entrypoints.jobs import jobs, startup
from .settings import HostAgentSettings

if __name__ == "__main__":
    if sys.argv[1:] == ["cleanup"]:
        asyncio.run(cleanup(HostAgentSettings()))
    else:
        asyncio.run(run("host_agent", HostAgentSettings(), bootstrap, jobs, startup))
