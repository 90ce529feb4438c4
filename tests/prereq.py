"""One policy for missing test prerequisites: skip on a developer machine,
fail under CI (where `.ci/run` sets CI and must provide everything)."""
from __future__ import annotations

import os

import pytest


def unavailable(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI but unavailable", pytrace=False)
    else:  # a developer machine without it: say so, never pass silently
        pytest.skip(f"{what} unavailable", allow_module_level=True)
