"""The local endpoint's reach into duckdb-kql (services/embedded/kusto/duckdb_kql_internals.py).

Each test fails with duckdb-kql's version and the member when a release
changes what the module relies on.
"""

from __future__ import annotations

import ast
import datetime as dt
import http.client
import inspect
import json
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import duckdb_kql
import pytest
from duckdb_kql.server import KustoRestServer

from services.embedded.kusto import duckdb_kql_internals as internals
from services.embedded.kusto import server as server_module
from services.embedded.kusto.duckdb_kql_internals import StockHandler

VERSION = duckdb_kql.__version__


def test_the_engine_s_own_helpers_still_answer_as_relied_on() -> None:
    assert internals.is_write_command(".set-or-append T <| print x = 1"), (
        f"duckdb-kql {VERSION}: is_write_command"
    )
    assert not internals.is_write_command(".show tables"), f"duckdb-kql {VERSION}: is_write_command"
    assert internals.strip_leading_comments("// why\n.show tables") == ".show tables", (
        f"duckdb-kql {VERSION}: strip_leading_comments"
    )
    assert internals.parse_timespan("1.5h") == dt.timedelta(hours=1, minutes=30), (
        f"duckdb-kql {VERSION}: parse_timespan"
    )
    assert internals.parse_timespan("soon") is None, f"duckdb-kql {VERSION}: parse_timespan"
    assert isinstance(internals.DEFAULT_PORT, int), f"duckdb-kql {VERSION}: DEFAULT_PORT"


class Marking(StockHandler):
    """A handler that marks every answer, to show they all go out through `finished_payload`."""

    #: Every handler of the test server appends here (one per request).
    statuses: ClassVar[list[int]] = []

    def finished_payload(self, status: int, payload: Any) -> Any:
        self.statuses.append(status)
        return {"marked": True, "payload": payload}


@pytest.fixture
def stock() -> Iterator[KustoRestServer]:
    con = duckdb_kql.connect()
    server = KustoRestServer(con, port=0, quiet=True)
    server.RequestHandlerClass = Marking
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        con.close()


def post(server: KustoRestServer, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(str(host), int(port), timeout=10)
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_every_answer_of_the_stock_handler_goes_out_through_finished_payload(stock: KustoRestServer) -> None:
    Marking.statuses = []

    answered = post(stock, "/v2/rest/query", {"db": stock.database, "csl": "print x = 1"})
    refused = post(stock, "/v2/rest/query", {"db": stock.database, "csl": "print x = "})

    assert answered[0] == 200
    assert answered[1]["marked"] is True, (
        f"duckdb-kql {VERSION}: a query's answer no longer goes out through _Handler._send "
        "(services/embedded/kusto/duckdb_kql_internals.py)"
    )
    assert any(frame.get("TableKind") == "PrimaryResult" for frame in answered[1]["payload"])
    assert refused[0] == 400
    assert refused[1]["marked"] is True, (
        f"duckdb-kql {VERSION}: an error no longer goes out through _Handler._send"
    )
    assert Marking.statuses == [200, 400]


def private_names(cls: type) -> set[str]:
    return {name for name in vars(cls) if name.startswith("_") and not name.startswith("__")}


def names_defined_in(module: Any, *classes: str) -> set[str]:
    """The private methods of *classes* and the private attributes their methods assign, from the source."""
    tree = ast.parse(inspect.getsource(module))
    found: set[str] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ClassDef) and node.name in classes):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef):
                found.add(inner.name)
            elif isinstance(inner, ast.Attribute) and isinstance(inner.ctx, ast.Store):
                if isinstance(inner.value, ast.Name) and inner.value.id == "self":
                    found.add(inner.attr)
            elif isinstance(inner, ast.AnnAssign) and isinstance(inner.target, ast.Name):
                found.add(inner.target.id)
    return {name for name in found if name.startswith("_") and not name.startswith("__")}


def test_the_endpoint_s_own_private_names_are_none_of_duckdb_kql_s() -> None:
    """A private name the endpoint defines that the library also uses would change the library's behaviour."""
    library: set[str] = set()
    for cls in (*KustoRestServer.__mro__, *internals._Handler.__mro__):
        library |= private_names(cls)
    con = duckdb_kql.connect()
    stock = KustoRestServer(con, port=0, quiet=True)
    try:
        library |= {name for name in vars(stock) if name.startswith("_")}
    finally:
        stock.server_close()
        con.close()

    ours = names_defined_in(server_module, "LocalServer", "_LocalHandler")

    assert {"_catalog", "_begin"} <= ours
    clashes = sorted(ours & library)
    assert not clashes, f"duckdb-kql {VERSION} uses these private names too: {clashes}"
