"""`python -m services.host_agent [cleanup | helper]`: runs this host's
sandboxes; `helper`: the privileged helper an unprivileged agent uses
(CORRAL_HELPER_SOCKET, CORRAL_AGENT_UID)."""
from __future__ import annotations

import asyncio
import sys

from common.service import run

from .bootstrap import bootstrap
from .entrypoints.cleanup import cleanup
from .entrypoints.helper import run_helper
from .entrypoints.jobs import jobs, startup
from .settings import HostAgentSettings

if __name__ == "__main__":
    if sys.argv[1:] == ["cleanup"]:
        asyncio.run(cleanup(HostAgentSettings()))
    elif sys.argv[1:] == ["helper"]:
        asyncio.run(run_helper(HostAgentSettings()))
    else:
        asyncio.run(run("host_agent", HostAgentSettings(), bootstrap, jobs, startup))
