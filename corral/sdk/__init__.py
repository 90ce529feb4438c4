"""Corral Python SDK: `Sandbox` (sync) and `AsyncSandbox` over the REST API."""
from ._http import ExecResult, RetryPolicy
from .async_sandbox import AsyncSandbox
from .config import Config
from .image import Image, ImageBuildError
from .errors import (AuthError, ConfigError, ConflictError, CorralConnectionError, CorralError,
                     NotFoundError, RateLimitError, SandboxFailedError, SandboxTimeoutError,
                     ServerError, StreamError, ValidationError)
from .sandbox import FileInfo, Files, Sandbox

__all__ = ["AsyncSandbox", "AuthError", "Config", "ConfigError", "ConflictError",
           "CorralConnectionError", "CorralError", "ExecResult", "FileInfo", "Files", "Image",
           "ImageBuildError", "NotFoundError", "RateLimitError", "RetryPolicy", "Sandbox",
           "SandboxFailedError", "SandboxTimeoutError", "ServerError", "StreamError",
           "ValidationError"]
