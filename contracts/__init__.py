"""Shared wire types: the only code services share about the bus."""
from .envelope import Envelope, new_id, utcnow  # noqa: F401
from .registry import ALL_TYPES, BY_NAME, InvalidMessage, parse_message  # noqa: F401
