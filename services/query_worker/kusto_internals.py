"""The one use the query worker makes of azure-kusto-data beyond its public API.

The async `KustoClient` sends every request through an aiohttp session it
keeps in the private attribute ``_session`` and calls only its ``post`` and
``close``. Nothing public lets a caller see the response of
``execute_streaming_query`` before the client's own, slow, row-at-a-time
reader takes it, nor read an error response's body before the client releases
it. So the worker hands the client a :class:`~services.query_worker.reading.Session`
in that attribute, which records the responses and reads error bodies at once
(``services.query_worker.wire`` parses the body itself).

This module is that reach into the library, and nothing else.
``tests/services/query_worker/test_kusto_internals.py`` fails, naming the
library's version and the member, when a release moves it; the client also
refuses to start here, saying so, rather than run half mended.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from aiohttp import ClientSession
from azure.kusto.data import KustoConnectionStringBuilder
from azure.kusto.data.aio import KustoClient

from services.query_worker.reading import Session

#: The private member the client sends its requests through.
SESSION_MEMBER = "_session"
#: The releases this reach was checked against (pyproject.toml keeps the library below 7).
CHECKED = "6.0"


class LibraryChanged(RuntimeError):
    """azure-kusto-data no longer has what this module reaches for."""

    def __init__(self, problem: str) -> None:
        version = importlib.metadata.version("azure-kusto-data")
        super().__init__(
            f"azure-kusto-data {version} (checked against {CHECKED}): {problem}; "
            "services/query_worker/kusto_internals.py must be brought up to date"
        )


def stock_session(client: KustoClient) -> ClientSession:
    """The client's own aiohttp session, where this module expects it."""
    session: Any = client.__dict__.get(SESSION_MEMBER)
    if not isinstance(session, ClientSession):
        raise LibraryChanged(
            f"KustoClient.{SESSION_MEMBER} is {type(session).__name__}, not the aiohttp ClientSession "
            "the client sends its requests through"
        )
    return session


class RecordingClient(KustoClient):
    """azure-kusto-data's async client, sending its requests through a `Session`."""

    def __init__(self, kcsb: KustoConnectionStringBuilder) -> None:
        super().__init__(kcsb)
        setattr(self, SESSION_MEMBER, Session(stock_session(self)))
