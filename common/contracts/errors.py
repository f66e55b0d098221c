"""One exception root; each subclass carries a stable code from the contracts.

Services raise these; the consumer turns them into a failed step with the
code, the message and whether a retry can help. Anything else that escapes a
handler is a bug and is recorded as ``Internal``.
"""

from __future__ import annotations

from typing import Any

from common.contracts.messages import ErrorCode, ErrorInfo


class AdxflowError(Exception):
    code: ErrorCode = ErrorCode.INTERNAL
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        retryable: bool | None = None,
        detail: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.message = message
        #: What the step had worked out before it failed (the query text it sent, say), for the history.
        self.detail: dict[str, Any] = dict(detail or {})
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable

    def info(self) -> ErrorInfo:
        return ErrorInfo(code=self.code, message=self.message, retryable=self.retryable)


class ConfigurationError(AdxflowError):
    """An operator setting is missing or wrong; names the key and the value."""


class UnknownConnection(AdxflowError):
    code = ErrorCode.UNKNOWN_CONNECTION


class KustoError(AdxflowError):
    code = ErrorCode.KUSTO_SERVICE_ERROR


class RenderError(AdxflowError):
    code = ErrorCode.RENDER_FAILED


class DeliveryError(AdxflowError):
    code = ErrorCode.SMTP_REJECTED


class ArtifactMissing(AdxflowError):
    code = ErrorCode.ARTIFACT_MISSING


class BlobStoreError(AdxflowError):
    """The blob store failed or could not be reached; ``retryable`` when another try may do."""


class DatabaseError(AdxflowError):
    """A copy into a configured database was refused or broke off; ``retryable`` when the database was
    unreachable or the connection dropped, and another try may do."""

    code = ErrorCode.DATABASE_ERROR


class FileUnavailable(AdxflowError):
    """A file an ingestion fetches could not be read (its server failed, or the connection broke):
    another try may read it."""

    code = ErrorCode.FILE_UNAVAILABLE
    retryable = True


class Requeue(Exception):
    """Raised by a handler: put the message back for another delivery."""


class DeadLetter(Exception):
    """Raised by a handler: this message can never succeed; dead-letter it."""
