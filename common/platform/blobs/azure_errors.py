"""Azure Storage's failures as adxflow's: a missing blob, or a BlobStoreError that says why.

A message names the action, the key, the HTTP status and Azure's error code,
never a URL (a connection string's SAS token would ride along in one), and
says whether trying again can help.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from common.contracts.errors import BlobStoreError
from common.platform.blobs.interface import artifact_missing


def _retryable(exc: AzureError) -> bool:
    if isinstance(exc, ServiceRequestError | ServiceResponseError | ResourceModifiedError):
        return True
    status = exc.status_code if isinstance(exc, HttpResponseError) else None
    return status is not None and (status in (408, 429) or status >= 500)


@contextlib.contextmanager
def translated(action: str, key: str) -> Iterator[None]:
    """Azure's errors within as adxflow's: a missing blob is ArtifactMissing, the rest a BlobStoreError."""
    try:
        yield
    except ResourceNotFoundError as exc:
        if error_code(exc) in ("BlobNotFound", "") and action in ("read", "look up"):
            raise artifact_missing(key) from None
        raise blob_error(action, key, exc) from None
    except AzureError as exc:
        raise blob_error(action, key, exc) from None


def error_code(exc: AzureError) -> str:
    """Azure Storage's error code (``BlobNotFound``), which azure-storage-blob sets on its errors."""
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


def blob_error(action: str, key: str, exc: AzureError) -> BlobStoreError:
    """*exc*, raised while trying to *action* *key*, as the error a step fails with."""
    if isinstance(exc, ClientAuthenticationError) and not error_code(exc):
        # Storage never answered: the credential got no token. Its first line says why.
        reason = "no token from the Azure identity: " + (exc.message or "").strip().split("\n")[0]
    elif isinstance(exc, HttpResponseError) and exc.status_code is not None:
        reason = f"HTTP {exc.status_code} {error_code(exc) or exc.reason or ''}".rstrip()
        if isinstance(exc, ClientAuthenticationError):
            reason += " (the storage account refused adxflow's credentials)"
    else:
        reason = type(exc).__name__
        if isinstance(exc.inner_exception, OSError):
            # A refused or failed connection names the host and port, nothing more.
            reason += f" ({exc.inner_exception})"
    return BlobStoreError(f"blob store: could not {action} {key!r}: {reason}", retryable=_retryable(exc))
