"""The public sandbox object, derived from the aggregate."""
from __future__ import annotations

from typing import Any

from .sandbox import Sandbox


def sandbox_view(sb: Sandbox) -> dict[str, Any]:
    spec = sb.spec
    return {
        "id": str(sb.id),
        "name": spec.get("name"),
        "org_id": sb.org_id,
        "image": spec.get("image", "default"),
        "vcpus": spec.get("vcpus"),
        "memory_mib": spec.get("memory_mib"),
        "state": sb.state,
        "host_id": sb.host_id,
        "created_at": sb.requested_at,
        "started_at": sb.started_at,
        "expires_at": sb.expires_at,
        "ended_at": sb.ended_at,
        "failure": sb.failure,
        "metadata": spec.get("metadata", {}),
    }
