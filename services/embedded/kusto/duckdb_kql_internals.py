"""What the local Kusto endpoint uses of duckdb-kql beyond its public API.

duckdb-kql 1.1.2 declares its public names in each module's ``__all__``. The
endpoint needs a few more, gathered here and nowhere else:

* The request handler (``duckdb_kql.server._Handler``), private, and the one
  method every answer goes out through (``_send(status, payload)``): the
  endpoint's handler mends requests before the stock one reads them and
  answers with the `render` request filled in (`services.embedded.kusto.server`).
  No public hook exists for either; :class:`StockHandler` gives them public
  names, `respond` and `finished_payload`.
* ``duckdb_kql.control.is_write_command`` and ``strip_leading_comments``, how
  the engine itself tells a write command, so a read-only endpoint refuses
  exactly what the engine would write.
* ``duckdb_kql.params.parse_timespan``, the engine's own timespan literal.
* ``duckdb_kql.server.DEFAULT_PORT``, the port ``duckdb-kql serve`` listens on.

Importing this module checks that each is still there with the shape relied on,
naming duckdb-kql's version and the member otherwise;
``tests/services/embedded/kusto/test_duckdb_kql_internals.py`` checks how they
behave. pyproject.toml pins duckdb-kql to the release they were checked on.
"""

from __future__ import annotations

import inspect
from http.server import BaseHTTPRequestHandler
from typing import Any

import duckdb_kql
from duckdb_kql import control, params, server

#: The release this module was checked against (pyproject.toml pins it).
CHECKED = "1.1.2"


class LibraryChanged(RuntimeError):
    """duckdb-kql no longer has what this module reaches for."""

    def __init__(self, problem: str) -> None:
        super().__init__(
            f"duckdb-kql {duckdb_kql.__version__} (checked against {CHECKED}): {problem}; "
            "services/embedded/kusto/duckdb_kql_internals.py must be brought up to date"
        )


def _member(module: Any, name: str, parameters: list[str] | None = None) -> Any:
    found = getattr(module, name, None)
    if found is None:
        raise LibraryChanged(f"{module.__name__}.{name} is gone")
    if parameters is not None and list(inspect.signature(found).parameters) != parameters:
        raise LibraryChanged(
            f"{module.__name__}.{name} takes ({', '.join(inspect.signature(found).parameters)}), "
            f"not ({', '.join(parameters)})"
        )
    return found


try:
    from duckdb_kql.server import _Handler
except ImportError as exc:
    raise LibraryChanged("duckdb_kql.server._Handler, the request handler, is gone") from exc
if not issubclass(_Handler, BaseHTTPRequestHandler):
    raise LibraryChanged("duckdb_kql.server._Handler is no longer an http.server request handler")
_member(_Handler, "_send", ["self", "status", "payload"])
_member(_Handler, "do_POST", ["self"])

is_write_command = _member(control, "is_write_command", ["text"])
strip_leading_comments = _member(control, "strip_leading_comments", ["text"])
parse_timespan = _member(params, "parse_timespan", ["text"])
DEFAULT_PORT: int = _member(server, "DEFAULT_PORT")


class StockHandler(_Handler):
    """duckdb-kql's request handler, with public names for what the endpoint's handler changes."""

    def respond(self, status: int, payload: Any) -> None:
        """Answer with *status* and the JSON of *payload*, as every stock answer goes out."""
        self._send(status, payload)

    def finished_payload(self, status: int, payload: Any) -> Any:
        """What goes out for *payload*, any answer's; the stock one, unchanged."""
        return payload

    def _send(self, status: int, payload: Any) -> None:
        super()._send(status, self.finished_payload(status, payload))
