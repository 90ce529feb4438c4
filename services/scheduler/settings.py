from __future__ import annotations

from pydantic import Field

from common.settings import CommonSettings


class SchedulerSettings(CommonSettings):
    placement_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    missed_heartbeats: float = Field(default=3.0, ge=1, le=100)
    sweep_interval_s: float = Field(default=1.0, gt=0, le=60)
