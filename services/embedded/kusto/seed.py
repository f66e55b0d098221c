"""Seeds a Kusto emulator with the sample table, from a script of control commands.

docker compose runs the Kusto emulator (kustainer) empty; a one-shot container
runs this module against it before the query worker starts::

    python -m services.embedded.kusto.seed apply --cluster http://kusto:8080 \
        --database Samples storm-events.kql

`apply` waits for the emulator to answer, creates the database if it is
missing, then runs each command of the script in it. A script is control
commands separated by blank lines; lines starting with ``//`` are comments.
The commands keep to forms the emulator and the local endpoint
(`services.embedded.kusto.endpoint`) both run, so the tests prove the script on the latter:
the database is ``volatile`` (duckdb-kql cannot persist to the emulator's
folders) and the table is made by ``.set-or-replace`` from a typed
``datatable`` (duckdb-kql has no ``.create table``), which also makes a second
run replace the rows instead of adding to them.

`write` renders the StormEvents script from `services.embedded.sample_data`, so the
committed file can be regenerated and checked::

    python -m services.embedded.kusto.seed write deploy/kusto/storm-events.kql
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import sys
from pathlib import Path
from typing import Any

from aiohttp import ClientError
from azure.kusto.data import KustoConnectionStringBuilder
from azure.kusto.data.aio import KustoClient
from azure.kusto.data.exceptions import KustoError, KustoNetworkError

from services.embedded.sample_data import (
    DEFAULT_SEED,
    STORM_EVENTS_COLUMNS,
    TABLE_NAME,
    storm_events_rows,
)

__all__ = ["SEED_ROWS", "apply_script", "commands", "storm_events_script"]

#: Rows in the committed StormEvents script: enough for every example flow to
#: draw something, few enough that the script stays a small file.
SEED_ROWS = 300
#: Rows per command of the script.
BATCH_ROWS = 100
#: The database a fresh Kusto engine has (the emulator's, and azure-kusto-data's
#: default), where the seed creates its own.
DEFAULT_DATABASE = "NetDefaultDB"


def commands(script: str) -> list[str]:
    """The control commands of *script*: blocks separated by blank lines, comments dropped."""
    found: list[str] = []
    block: list[str] = []
    for line in [*script.splitlines(), ""]:
        if line.lstrip().startswith("//"):
            continue
        if line.strip():
            block.append(line)
        elif block:
            found.append("\n".join(block))
            block = []
    return found


def _literal(kind: str, value: Any) -> str:
    if kind == "datetime":
        assert isinstance(value, dt.datetime)
        return f"datetime({value.isoformat()})"
    if kind in ("int", "long"):
        return str(int(value))
    if kind == "real":
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"no Kusto literal for real {number!r}")
        return repr(number)
    if kind == "string":
        text = str(value)
        if any(ord(char) < 0x20 for char in text):
            raise ValueError(f"control character in string {text!r}")
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if kind == "dynamic":
        return f"dynamic({value})"
    raise ValueError(f"no literal for Kusto type {kind!r}")


def storm_events_script(count: int = SEED_ROWS, seed: int = DEFAULT_SEED) -> str:
    """The seed script: *count* rows of `services.embedded.sample_data`'s StormEvents, schema and all.

    The first command replaces the table's rows and the next ones append, each with
    at most `BATCH_ROWS` rows: the local endpoint parses a long ``datatable`` slowly.
    """
    schema = ", ".join(f"{name}: {kind}" for name, kind in STORM_EVENTS_COLUMNS)
    rows = [
        ", ".join(_literal(kind, value) for (_, kind), value in zip(STORM_EVENTS_COLUMNS, row, strict=True))
        for row in storm_events_rows(count, seed)
    ]
    header = (
        f"// The {TABLE_NAME} sample table of the Kusto emulator in docker compose: {count} rows\n"
        f"// from services.embedded.sample_data (seed {seed}), the generator of embedded mode's table.\n"
        "// Regenerate with: python -m services.embedded.kusto.seed write deploy/kusto/storm-events.kql\n"
    )
    blocks = []
    for start in range(0, max(len(rows), 1), BATCH_ROWS):
        verb = ".set-or-replace" if start == 0 else ".set-or-append"
        batch = ",\n".join(rows[start : start + BATCH_ROWS])
        blocks.append(f"{verb} {TABLE_NAME} <|\ndatatable({schema})\n[\n{batch}\n]\n")
    return header + "".join(f"\n{block}" for block in blocks)


async def _wait_until_answering(client: KustoClient, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            await client.execute_mgmt(DEFAULT_DATABASE, ".show version")
            return
        except (KustoNetworkError, ClientError, TimeoutError) as exc:
            if loop.time() >= deadline:
                raise TimeoutError(f"the cluster did not answer: {exc}") from None
        await asyncio.sleep(1)


async def apply_script(
    cluster: str, database: str, script: str, *, wait_seconds: float = 0, out: Any = sys.stdout
) -> None:
    """Create *database* on *cluster* if missing, then run each command of *script* in it."""
    kcsb = KustoConnectionStringBuilder.with_no_authentication(cluster)
    async with KustoClient(kcsb) as client:
        await _wait_until_answering(client, asyncio.get_running_loop().time() + wait_seconds)
        await client.execute_mgmt(DEFAULT_DATABASE, f".create database {database} volatile ifnotexists")
        for command in commands(script):
            response = await client.execute_mgmt(database, command)
            result = response.primary_results[0]
            print(f"{_head(command)}: {len(result.raw_rows)} result rows", file=out, flush=True)


def _head(command: str, width: int = 60) -> str:
    first = command.splitlines()[0].strip()
    return first if len(first) <= width else first[: width - 1] + "…"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.embedded.kusto.seed", description=__doc__.split("\n")[0]
    )
    actions = parser.add_subparsers(dest="action", required=True)
    apply = actions.add_parser("apply", help="run a seed script against an unauthenticated cluster")
    apply.add_argument("script", type=Path)
    apply.add_argument("--cluster", required=True, help="the cluster URL, e.g. http://kusto:8080")
    apply.add_argument("--database", required=True, help="created if missing; the commands run in it")
    apply.add_argument("--wait", type=float, default=0, help="seconds to wait for the cluster to answer")
    write = actions.add_parser("write", help="render the StormEvents seed script to a file")
    write.add_argument("path", type=Path)
    write.add_argument("--rows", type=int, default=SEED_ROWS)
    args = parser.parse_args(argv)
    if args.action == "write":
        args.path.parent.mkdir(parents=True, exist_ok=True)
        args.path.write_text(storm_events_script(args.rows), encoding="utf-8")
        return
    try:
        script = args.script.read_text(encoding="utf-8")
        asyncio.run(apply_script(args.cluster, args.database, script, wait_seconds=args.wait))
    except (OSError, ClientError, KustoError, TimeoutError) as exc:
        print(f"kusto_seed: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
