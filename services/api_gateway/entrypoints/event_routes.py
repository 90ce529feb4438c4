"""`GET /v1/events`: the caller's sandbox events as Server-Sent Events, from
the durable stream, resumable by cursor (docs/api-events.md)."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import StreamingResponse

from contracts.rpc import Principal

from ..application.events import FEED_TYPES, FeedQuery
from ..application.errors import NotFound, UseCaseError
from .deps import Ctx, OpId, principal
from .sse import error_event
from .params import ISO, parse_when

events_router = APIRouter(tags=["events"])
SEQ = r"^\d{1,19}$"
ID = r"^[A-Za-z0-9_-]{1,64}$"


def _types(values: list[str]) -> tuple[str, ...]:
    out = tuple(t.strip() for v in values for t in v.split(",") if t.strip())
    return tuple(dict.fromkeys(out))


@events_router.get("/v1/events", response_class=StreamingResponse,
                   openapi_extra={"x-key-scopes": ["org", "admin"]}, responses={200: {
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
    "description": "`id:` (the cursor), `event:` (the type), `data:` (the event as on the "
                   "bus); `: keepalive` comments when idle. See docs/api-events.md"}})
async def events(
    ctx: Ctx, oid: OpId, caller: Annotated[Principal, Depends(principal)],
    cursor: Annotated[str | None, Query(pattern=SEQ, description="resume after this event "
                                        "(the `id` of the last one received)")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", pattern=SEQ)] = None,
    sandbox_id: Annotated[str | None, Query(pattern=ID)] = None,
    type_: Annotated[list[str], Query(alias="type", max_length=16, description=(
        "event types, repeated or comma-separated: " + ", ".join(FEED_TYPES)))] = [],  # noqa: B006
    since: Annotated[str | None, Query(pattern=ISO, description="without a cursor: from this "
                                       "time (ISO 8601 with offset); default: new events only")
                     ] = None,
    org_id: Annotated[str | None, Query(pattern=ID, description="admin key only: one org "
                                        "(default: every org)")] = None,
) -> StreamingResponse:
    """Sandbox and snapshot lifecycle events of the caller's org, in order, live."""
    if caller.scope == "org":
        if org_id is not None and org_id != caller.org_id:
            raise NotFound("no such org")  # another org's: as if absent
        org_id = caller.org_id
    resume = cursor or last_event_id
    q = FeedQuery(org_id=org_id, sandbox_id=sandbox_id, types=_types(type_),
                  after=int(resume) if resume else None, since=parse_when(since, "since"))
    q.subjects()  # bad filters are a 4xx now, not a broken stream later
    return StreamingResponse(_stream(ctx, q, oid), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _stream(ctx: Ctx, q: FeedQuery, op_id: str) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n: connected\n\n"
    try:
        async for ev in ctx.events.follow(q):
            if ev is None:
                yield b": keepalive\n\n"
            else:
                yield (f"id: {ev.seq}\nevent: {ev.type}\n"
                       f"data: {json.dumps(ev.doc, separators=(',', ':'))}\n\n").encode()
    except UseCaseError as e:
        yield error_event("invalid", e.detail, op_id)
    except Exception:  # noqa: BLE001 - the bus went away: end the stream, the client resumes
        yield error_event("unavailable", "the event stream is unavailable; resume with "
                          "the last id", op_id)
