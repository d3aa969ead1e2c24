"""nox_client: a stdlib-only Python client for the nox HTTP API."""

from .client import (
    AuthError,
    BadRequest,
    Busy,
    ExecutorUnavailable,
    NotFoundError,
    NoxClient,
    NoxError,
    PayloadTooLarge,
    RunResult,
)

__all__ = [
    "AuthError",
    "BadRequest",
    "Busy",
    "ExecutorUnavailable",
    "NotFoundError",
    "NoxClient",
    "NoxError",
    "PayloadTooLarge",
    "RunResult",
]
__version__ = "0.1.0"
