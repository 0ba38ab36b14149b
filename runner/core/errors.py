"""The errors a job can end with: each has the kind its record stores and a message the
user reads. Raised by executors, sources and the pipeline alike."""

from __future__ import annotations

from typing import Literal

#: what a failed job's record says went wrong
ErrorKind = Literal["invalid", "build", "auth", "infrastructure", "cancelled", "timeout", "worker_lost"]


class ExecutorError(Exception):
    """A job failure with a kind the record stores and a message the user reads."""

    kind: ErrorKind = "build"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidJob(ExecutorError):
    """The job cannot be built as asked (bad Dockerfile path, unknown secret, ...)."""

    kind: ErrorKind = "invalid"


class BuildFailed(ExecutorError):
    kind: ErrorKind = "build"


class RegistryAuthFailed(ExecutorError):
    kind: ErrorKind = "auth"


class InfrastructureError(ExecutorError):
    """The engine, registry or tool is unreachable or broken; not the job's fault."""

    kind: ErrorKind = "infrastructure"


class Cancelled(ExecutorError):
    """Raised when the cancel token fires; kind is 'cancelled' or 'timeout'."""

    def __init__(self, reason: str):
        self.kind = "timeout" if reason == "timeout" else "cancelled"
        super().__init__("the job timed out" if reason == "timeout" else "the job was cancelled")


#: Words in a registry's (or a tool's report of a registry's) refusal that mean our
#: credentials were refused, not that the build went wrong. The one list every executor uses.
AUTH_WORDS = ("unauthorized", "authentication required", "no basic auth credentials",
              "requested access to the resource is denied", "403 (forbidden)", "403 forbidden")


def is_auth_error(message: str) -> bool:
    lower = message.lower()
    return any(word in lower for word in AUTH_WORDS)
