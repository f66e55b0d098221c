"""The query worker's reach into azure-kusto-data (services/query_worker/kusto_internals.py).

Each test fails with the library's version and the member when a release of
azure-kusto-data changes what the module relies on: where the async client
keeps its aiohttp session, that it sends requests through that session's
``post``, and that a streamed query's response is left for the worker to read.
"""

from __future__ import annotations

import importlib.metadata
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import ClientResponse, ClientSession
from azure.kusto.data import KustoConnectionStringBuilder
from azure.kusto.data.aio import KustoClient
from azure.kusto.data.exceptions import KustoServiceError

from services.embedded.kusto.database import ensure_database
from services.embedded.kusto.endpoint import LocalKusto
from services.query_worker.kusto_internals import (
    SESSION_MEMBER,
    LibraryChanged,
    RecordingClient,
    stock_session,
)
from services.query_worker.reading import Session, streamed
from services.query_worker.wire import ResponseStream

VERSION = importlib.metadata.version("azure-kusto-data")


@pytest.fixture(scope="module")
def local() -> Iterator[LocalKusto]:
    with (
        tempfile.TemporaryDirectory(prefix="adxflow-internals-") as directory,
        LocalKusto(ensure_database(Path(directory), count=50)) as server,
    ):
        yield server


def kcsb(local: LocalKusto) -> KustoConnectionStringBuilder:
    return KustoConnectionStringBuilder.with_no_authentication(local.url)


async def test_the_stock_client_keeps_its_aiohttp_session_where_it_is_swapped(local: LocalKusto) -> None:
    client = KustoClient(kcsb(local))
    try:
        kept = client.__dict__.get(SESSION_MEMBER)
        assert isinstance(kept, ClientSession), (
            f"azure-kusto-data {VERSION}: KustoClient.{SESSION_MEMBER} is {type(kept).__name__}, "
            "not an aiohttp ClientSession; services/query_worker/kusto_internals.py relies on it"
        )
        assert stock_session(client) is kept
    finally:
        await client.close()


async def test_a_client_without_the_member_is_refused_naming_version_and_member(local: LocalKusto) -> None:
    client = KustoClient(kcsb(local))
    try:
        session = client.__dict__.pop(SESSION_MEMBER)
        with pytest.raises(LibraryChanged, match=rf"azure-kusto-data {VERSION} .*KustoClient\._session"):
            stock_session(client)
    finally:
        client.__dict__[SESSION_MEMBER] = session
        await client.close()


async def test_a_streamed_query_goes_through_the_session_and_its_response_is_left_unread(
    local: LocalKusto,
) -> None:
    client = RecordingClient(kcsb(local))
    opened: list[ClientResponse] = []
    token = streamed.set(opened)
    try:
        assert isinstance(client.__dict__[SESSION_MEMBER], Session)
        await client.execute_streaming_query(local.database, "StormEvents | take 3")
        assert len(opened) == 1, (
            f"azure-kusto-data {VERSION}: execute_streaming_query no longer posts through "
            f"KustoClient.{SESSION_MEMBER}.post; services/query_worker/kusto_internals.py relies on it"
        )
        frames = [frame async for frame in ResponseStream(opened[0].content).frames()]
        primary = [frame for frame in frames if frame.get("TableKind") == "PrimaryResult"]
        assert len(primary) == 1, (
            f"azure-kusto-data {VERSION}: the streamed response was read before the worker could read it"
        )
    finally:
        streamed.reset(token)
        for response in opened:
            response.close()
        await client.close()


async def test_a_streamed_query_s_error_is_read_before_the_client_releases_it(local: LocalKusto) -> None:
    client = RecordingClient(kcsb(local))
    try:
        with pytest.raises(KustoServiceError) as raised:
            await client.execute_streaming_query(local.database, "NoSuchTable | take 3")
        assert "NoSuchTable" in str(raised.value), (
            f"azure-kusto-data {VERSION}: Kusto's error was lost from a streamed query's error response"
        )
    finally:
        await client.close()
