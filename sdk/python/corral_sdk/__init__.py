"""Corral Python SDK: `Sandbox` (sync) and `AsyncSandbox` over the REST API,
snapshots and forks, background processes and PTYs, ports, images. Needs
only httpx; Python 3.9 or newer."""
from ._http import ExecResult, RetryPolicy
from .async_sandbox import AsyncSandbox
from .config import Config
from .errors import (ArgumentError, AuthError, ConfigError, ConflictError, CorralConnectionError,
                     CorralError, NotFoundError, RateLimitError, SandboxFailedError,
                     SandboxTimeoutError, ServerError, StreamError, ValidationError)
from .image import Image, ImageBuildError
from .processes import ProcessExit, ProcessInfo, Processes
from .sandbox import FileInfo, Files, Sandbox
from .snapshot import AsyncSnapshot, Snapshot

__version__ = "0.1.0"
__all__ = ["ArgumentError", "AsyncSandbox", "AsyncSnapshot", "AuthError", "Config", "ConfigError",
           "ConflictError", "CorralConnectionError", "CorralError", "ExecResult", "FileInfo",
           "Files", "Image", "ImageBuildError", "NotFoundError", "ProcessExit", "ProcessInfo",
           "Processes", "RateLimitError", "RetryPolicy", "Sandbox", "SandboxFailedError",
           "SandboxTimeoutError", "ServerError", "Snapshot", "StreamError", "ValidationError"]
