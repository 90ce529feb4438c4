"""Client-side checks of call arguments: a wrong argument raises ArgumentError
naming the parameter, before anything is sent."""
from __future__ import annotations

import re
from typing import Any

from .errors import ArgumentError

NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def check_str(param: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise ArgumentError(f"{param} must be a non-empty string, got {value!r}", param=param)


def check_name(param: str, value: Any, *, optional: bool = False) -> None:
    check_str(param, value, optional=optional)
    if value is not None and not NAME.match(value):
        raise ArgumentError(f"{param} must be a DNS label (1..63 of a-z 0-9 '-', no leading "
                            f"or trailing '-'), got {value!r}", param=param)


def check_int(param: str, value: Any, lo: int, hi: int | None = None, *,
              optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentError(f"{param} must be an int, got {type(value).__name__} {value!r}",
                            param=param)
    if value < lo or (hi is not None and value > hi):
        bounds = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ArgumentError(f"{param} must be {bounds}, got {value}", param=param)


def check_seconds(param: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ArgumentError(f"{param} must be a positive number of seconds, got {value!r}",
                            param=param)


def check_map(param: str, value: Any) -> None:
    """None or a dict of str to str."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise ArgumentError(f"{param} must be a dict of str to str, got "
                            f"{type(value).__name__}", param=param)
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ArgumentError(f"{param} must map str to str; {k!r}: {v!r} is not",
                                param=param)


def check_argv(param: str, value: Any) -> None:
    if isinstance(value, str):
        check_str(param, value)
        return
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(a, str) for a in value)):
        raise ArgumentError(f"{param} must be a str (run by sh -c) or a non-empty list of str, "
                            f"got {value!r}", param=param)


def check_path(param: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    check_str(param, value)
    if not value.startswith("/"):
        raise ArgumentError(f"{param} must be an absolute path, got {value!r}", param=param)
