from __future__ import annotations

from typing import Literal

from pydantic import Field

from common.settings import CommonSettings


class SchedulerSettings(CommonSettings):
    placement_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    # a host is lost after this many of its heartbeat intervals of silence,
    # counted only while the bus flows for the scheduler (see liveness.py)
    missed_heartbeats: float = Field(default=3.0, ge=1, le=100)
    sweep_interval_s: float = Field(default=1.0, gt=0, le=60)
    # how often the scheduler checks that the bus delivers to it
    bus_probe_interval_s: float = Field(default=1.0, gt=0, le=30)
    # a sandbox recorded lost that its host turns out to run: adopt or destroy
    lost_sandbox_policy: Literal["adopt", "destroy"] = "adopt"
    # a discrepancy a fact in flight may explain must hold this long to be acted on
    reconcile_confirm_s: float = Field(default=5.0, ge=0, le=3600)
    # a placement this young may not have reached its host: not missing yet
    reconcile_missing_grace_s: float = Field(default=60.0, ge=0, le=86400)
