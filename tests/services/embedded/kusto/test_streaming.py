"""The streaming ingestion request as the local Kusto endpoint reads it: route, body, limits."""

from __future__ import annotations

import gzip
import io

import pytest

from services.embedded.kusto.literals import RequestRefused
from services.embedded.kusto.streaming import (
    MAX_STREAMING_BYTES,
    StreamingRequest,
    read_body,
    streaming_request,
)


def test_route_names_database_table_and_format() -> None:
    assert streaming_request(
        "/v1/rest/ingest/Landing/My%20Events?streamFormat=MultiJson"
    ) == StreamingRequest("Landing", "My Events", "multijson")
    assert streaming_request("/v1/rest/mgmt") is None


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/v1/rest/ingest/Landing/Events", "needs a streamFormat"),
        ("/v1/rest/ingest/Landing/Events?streamFormat=avro", "streamFormat 'avro' is not served here"),
        ("/v1/rest/ingest/Landing/Events?streamFormat=csv&sourceKind=uri", "from a blob is not served"),
    ],
)
def test_route_refuses_what_is_not_served(path: str, reason: str) -> None:
    with pytest.raises(RequestRefused, match=reason):
        streaming_request(path)


def test_body_is_gunzipped_only_when_it_is_gzip() -> None:
    data = b"1,one\n2,two\n"
    packed = gzip.compress(data)
    assert read_body(io.BytesIO(packed), str(len(packed)), None) == data
    assert read_body(io.BytesIO(data), str(len(data)), None) == data


def test_chunked_body_is_read_to_its_last_chunk() -> None:
    wire = b"4\r\n1,on\r\n6;ext=1\r\ne\n2,tw\r\n0\r\nTrailer: x\r\n\r\nNEXT REQUEST"
    stream = io.BytesIO(wire)
    assert read_body(stream, None, "chunked") == b"1,one\n2,tw"
    assert stream.read() == b"NEXT REQUEST"


def test_body_larger_than_kusto_allows_once_decompressed_is_refused() -> None:
    packed = gzip.compress(b"x" * (MAX_STREAMING_BYTES + 1))
    assert len(packed) < MAX_STREAMING_BYTES
    with pytest.raises(RequestRefused, match="Kusto's limit for one streaming ingestion"):
        read_body(io.BytesIO(packed), str(len(packed)), None)


def test_truncated_gzip_body_is_refused() -> None:
    packed = gzip.compress(b"1,one\n" * 100)[:-12]
    with pytest.raises(RequestRefused, match="truncated"):
        read_body(io.BytesIO(packed), str(len(packed)), None)
