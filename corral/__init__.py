"""Corral: self-hostable microVM sandboxes. The SDK's public names live here."""
from .sdk import (AsyncSandbox, AuthError, ConfigError, ConflictError, CorralConnectionError,
                  CorralError, ExecResult, FileInfo, NotFoundError, RateLimitError, RetryPolicy,
                  Sandbox, SandboxFailedError, SandboxTimeoutError, ServerError, StreamError,
                  ValidationError)

__all__ = ["AsyncSandbox", "AuthError", "ConfigError", "ConflictError", "CorralConnectionError",
           "CorralError", "ExecResult", "FileInfo", "NotFoundError", "RateLimitError",
           "RetryPolicy", "Sandbox", "SandboxFailedError", "SandboxTimeoutError", "ServerError",
           "StreamError", "ValidationError"]
