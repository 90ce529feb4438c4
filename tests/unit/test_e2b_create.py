"""E2B's create answers only a running sandbox: one that did not start in
time (or failed) is destroyed before the error is answered, since the caller
never learns its id otherwise."""
from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import pytest

from services.api_gateway.application.errors import Conflict
from services.api_gateway.entrypoints import e2b_routes


def ctx_with(final_state: str, live: bool, failure: dict | None = None) -> SimpleNamespace:
    pending = SimpleNamespace(id="sb-1")
    final = SimpleNamespace(id="sb-1", state=final_state, live=live, failure=failure)
    sandboxes = SimpleNamespace(create=mock.AsyncMock(return_value=(pending, True, None)),
                                wait_running=mock.AsyncMock(return_value=final),
                                destroy=mock.AsyncMock())
    return SimpleNamespace(sandboxes=sandboxes)


@pytest.mark.parametrize(("state", "live", "failure", "destroyed"), [
    ("pending", True, None, True),                         # not started within WAIT_S
    ("starting", True, None, True),
    ("failed", False, {"message": "no capacity"}, False),  # ended by itself: nothing to end
])
async def test_a_sandbox_that_did_not_start_is_destroyed_before_the_error(
        state, live, failure, destroyed):
    ctx = ctx_with(state, live, failure)
    with pytest.raises(Conflict) as e:
        await e2b_routes.create(ctx, "op_1", "org-1", e2b_routes.NewSandbox(templateID="base"))
    assert "sb-1" in e.value.detail and "destroyed" in e.value.detail
    assert ctx.sandboxes.wait_running.await_args.args == ("sb-1", "org-1", e2b_routes.WAIT_S)
    if destroyed:
        ctx.sandboxes.destroy.assert_awaited_once_with("sb-1", "org-1", "op_1")
    else:
        ctx.sandboxes.destroy.assert_not_awaited()
    if failure:
        assert "no capacity" in e.value.detail
