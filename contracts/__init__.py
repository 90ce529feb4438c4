"""Shared wire types: the only code services share about the bus."""
from .envelope import Envelope, new_id, utcnow
from .registry import ALL_TYPES, BY_NAME, InvalidMessage, parse_message

__all__ = ["ALL_TYPES", "BY_NAME", "Envelope", "InvalidMessage", "new_id", "parse_message",
           "utcnow"]
