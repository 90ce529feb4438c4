"""What runs in the auth process besides the broker's endpoints: health."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from common.service import serve_health

from ..bootstrap import AuthContext


def jobs(ctx: AuthContext, stop: asyncio.Event) -> list[Awaitable[None]]:
    s = ctx.settings
    return [serve_health(s.health_port, ctx.ready, stop, s.health_host)]
