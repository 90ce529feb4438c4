"""Query parameters shared by routes."""
from __future__ import annotations

from datetime import datetime

from fastapi.exceptions import RequestValidationError

# ISO 8601 with an offset, as text: a bare number is not a time here.
ISO = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})$"


def parse_when(text: str | None, name: str) -> datetime | None:
    """A query parameter's time (already matched against ISO), or a 422."""
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RequestValidationError([{"loc": ("query", name), "msg": "not a valid time",
                                       "type": "datetime_parsing"}]) from None
