"""The local Kusto endpoint embedded mode queries instead of Azure Data Explorer.

It is duckdb-kql's Kusto REST server over a DuckDB file, run on loopback in a
background thread, so the query worker talks to it with the same
azure-kusto-data client it uses against a real cluster. This module owns its
lifecycle (`LocalKusto`, `start_local_kusto`, `python -m services.embedded.kusto.endpoint`);
the server and handler that close the gaps between that client and duckdb-kql
are in `services.embedded.kusto.server`, with parameter literals read by
`services.embedded.kusto.literals`, `async` commands and `.show operations` in
`services.embedded.kusto.operations`, `render` in `services.embedded.kusto.render`,
streaming ingestion in `services.embedded.kusto.streaming` (its rows appended by
`services.embedded.kusto.staging`), and ingest-by tags in `services.embedded.kusto.extents`.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import signal
import threading
from pathlib import Path
from types import TracebackType

import duckdb_kql

from services.embedded.kusto.database import ensure_database
from services.embedded.kusto.duckdb_kql_internals import DEFAULT_PORT
from services.embedded.kusto.server import POLL_SECONDS, LocalServer

__all__ = ["EMPTY_DATABASE", "LocalKusto", "empty_database", "start_local_kusto"]

#: The database a fresh Kusto engine has (the emulator's, and azure-kusto-data's default).
EMPTY_DATABASE = "NetDefaultDB"


def _loopback(host: str) -> str:
    """*host* if it is an IPv4 loopback address; this endpoint answers anyone
    who can reach it, unauthenticated."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or address.version != 4 or not address.is_loopback:
        raise ValueError(
            f"host {host!r} is not an IPv4 loopback address; the local Kusto endpoint binds 127.x only"
        )
    return host


class LocalKusto:
    """A Kusto REST endpoint over a DuckDB file, served from a daemon thread.

    ``with LocalKusto(path) as kusto:`` (or ``async with``) starts it; point an
    azure-kusto-data client at `url` and query database `database`.

    Read-only unless *writable*: then the file is opened read-write, the
    engine's write commands run, and so do their `async` forms. A read-write
    DuckDB file is locked to this process while the endpoint is open.
    """

    def __init__(
        self, database_path: Path, *, port: int = 0, host: str = "127.0.0.1", writable: bool = False
    ) -> None:
        self._path = Path(database_path)
        self._host = _loopback(host)
        self._port = port
        self.writable = writable
        self._server: LocalServer | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.url if self._server else "not started"
        mode = "read-write" if self.writable else "read-only"
        return f"<LocalKusto {self._path.name} {mode} {state}>"

    @property
    def url(self) -> str:
        """The cluster URL, with the port actually bound."""
        if self._server is None:
            raise RuntimeError("the local Kusto endpoint is not started")
        return self._server.url

    @property
    def database(self) -> str:
        """The Kusto database name: DuckDB names an attached file after its stem."""
        return self._path.stem

    def start(self) -> LocalKusto:
        """Open the database and start serving; a second call does nothing."""
        if self._closed:
            raise RuntimeError("a closed LocalKusto cannot be restarted")
        if self._server is not None:
            return self
        if not self._path.is_file():
            raise FileNotFoundError(f"no DuckDB database at {self._path}")
        con = duckdb_kql.connect(str(self._path), read_only=not self.writable)
        try:
            server = LocalServer(
                con, source=self._path, host=self._host, port=self._port, writable=self.writable
            )
        except BaseException:
            con.close()
            raise
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": POLL_SECONDS},
            name=f"local-kusto-{server.server_address[1]}",
            daemon=True,
        )
        self._server = server
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port and the database. Idempotent.

        Running queries and background operations are interrupted; an
        interrupted write may leave its target table created but not filled,
        since the engine's statements for one command are not one transaction.
        """
        if self._closed:
            return
        self._closed = True
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        thread.join()
        server.close_database()

    def __enter__(self) -> LocalKusto:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> LocalKusto:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # shutdown() blocks until the accept loop notices; not on the event loop.
        await asyncio.to_thread(self.close)


def start_local_kusto(data_dir: Path, port: int = 0, *, writable: bool = True) -> LocalKusto:
    """A started endpoint over the sample database in *data_dir*, built if missing.

    Writable by default: embedded mode is the user's own sandbox, and flows
    write to it with `.set-or-append` as they would to a cluster.
    """
    return LocalKusto(ensure_database(Path(data_dir)), port=port, writable=writable).start()


def empty_database(data_dir: Path) -> Path:
    """`<data_dir>/NetDefaultDB.duckdb`, created empty if missing: a fresh engine's only database."""
    path = Path(data_dir) / f"{EMPTY_DATABASE}.duckdb"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        duckdb_kql.connect(str(path)).close()
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.embedded.kusto.endpoint",
        description="Serve the StormEvents sample database as a local Kusto endpoint.",
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="where the sample database lives")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0 picks one")
    parser.add_argument("--read-only", action="store_true", help="refuse write commands")
    parser.add_argument(
        "--empty",
        action="store_true",
        help=f"serve one empty database, {EMPTY_DATABASE}, as the Kusto emulator starts (in docker compose's "
        "stand-in, for kusto-seed to create and fill Samples) instead of the sample database",
    )
    args = parser.parse_args(argv)
    stop = threading.Event()
    # Ctrl-C and a container's SIGTERM both end the wait, so the endpoint closes
    # through the same path either way.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    if args.empty:
        endpoint = LocalKusto(empty_database(args.data_dir), port=args.port, writable=not args.read_only)
    else:
        endpoint = start_local_kusto(args.data_dir, args.port, writable=not args.read_only)
    with endpoint as kusto:
        print(f"Kusto endpoint {kusto.url}, database {kusto.database!r}. Ctrl-C to stop.", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
