"""Copies into the machine's real PostgreSQL and MariaDB: every mode, the types, once only, and failures."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from common.contracts.copies import CopyMode
from common.contracts.errors import DatabaseError
from common.contracts.messages import ErrorCode
from common.contracts.results import Column
from common.platform.connections import DatabaseConfig, SecretRef
from common.platform.sql import Batch, CopyRequest, SqlDatabase
from common.platform.sql.ledger import LEDGER_TABLE
from tests.proxy import Proxy

COLUMNS = [Column(name="id", type="long"), Column(name="name", type="string"), Column(name="n", type="int")]


@dataclass
class Target:
    """A fresh database of one kind, its connection as an operator would configure it, and a reader."""

    kind: str
    url: str
    config: DatabaseConfig
    engine: AsyncEngine

    def database(self, **changes: Any) -> SqlDatabase:
        return SqlDatabase(self.kind, self.config.model_copy(update=changes))

    async def execute(self, statement: str) -> None:
        async with self.engine.begin() as connection:
            await connection.exec_driver_sql(statement)

    async def rows(self, table: str, order: str = "id") -> list[tuple[Any, ...]]:
        async with self.engine.connect() as connection:
            result = await connection.exec_driver_sql(f"SELECT * FROM {table} ORDER BY {order}")
            return [tuple(row) for row in result]

    async def count(self, table: str) -> int:
        async with self.engine.connect() as connection:
            return int((await connection.exec_driver_sql(f"SELECT count(*) FROM {table}")).scalar_one())


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
async def target(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    postgres_database: Callable[[], AbstractAsyncContextManager[str]],
    mariadb_database: Callable[[], AbstractAsyncContextManager[str]],
) -> AsyncIterator[Target]:
    fresh = postgres_database if request.param == "postgresql" else mariadb_database
    async with fresh() as url:
        full = make_url(url)
        password = full.password
        config: dict[str, Any] = {
            "url": sa_url(full.drivername, full.username, full.host, full.port, full.database),
            "tables": ["report*", "daily_summary"],
        }
        if password is not None:
            monkeypatch.setenv("ADXFLOW_TEST_SQL_PASSWORD", str(password))
            config["password"] = SecretRef(env="ADXFLOW_TEST_SQL_PASSWORD")
        engine = create_async_engine(url)
        try:
            yield Target(request.param, url, DatabaseConfig.model_validate(config), engine)
        finally:
            await engine.dispose()


def sa_url(driver: str, user: str | None, host: str | None, port: int | None, database: str | None) -> str:
    """A URL without a password, as an operator writes one."""
    return URL.create(driver, user, None, host, port, database).render_as_string(hide_password=False)


async def batches(
    rows: list[list[Any]], columns: list[Column] = COLUMNS, size: int = 2, fail_after: int | None = None
) -> AsyncIterator[Batch]:
    """*rows* in batches of *size*, as the blob store streams them; raising after *fail_after* batches."""
    for number, start in enumerate(range(0, len(rows), size)):
        if number == fail_after:
            raise RuntimeError("the source broke off")
        yield columns, rows[start : start + size]


def request_of(
    mode: CopyMode = CopyMode.APPEND, keys: tuple[str, ...] = (), step: str = "copy"
) -> CopyRequest:
    return CopyRequest(run_id="run-1", step_id=step, table="report", mode=mode, keys=keys)


ROWS = [[1, "one", 10], [2, "two", 20], [3, "three", 30]]


async def test_append_creates_the_table_and_adds_rows_each_step(target: Target) -> None:
    async with target.database() as database:
        first = await database.copy(request_of(step="a"), batches(ROWS))
        second = await database.copy(request_of(step="b"), batches(ROWS))
    assert (first.rows, first.repeated, second.rows) == (3, False, 3)
    assert await target.rows("report", "id, name") == [tuple(row) for row in ROWS for _ in (1, 2)]


async def test_the_same_run_and_step_copies_once(target: Target) -> None:
    async with target.database() as database:
        first = await database.copy(request_of(), batches(ROWS))
        again = await database.copy(request_of(), batches(ROWS + ROWS))
    assert (first.rows, first.repeated) == (3, False)
    assert (again.rows, again.repeated) == (3, True)
    assert await target.count("report") == 3
    ledger = [row[:5] for row in await target.rows(LEDGER_TABLE, "run_id")]
    assert ledger == [("run-1", "copy", "report", "append", 3)]


async def test_concurrent_tries_of_one_step_write_once(target: Target) -> None:
    async with target.database() as one, target.database() as other:
        outcomes = await asyncio.gather(
            one.copy(request_of(), batches(ROWS)), other.copy(request_of(), batches(ROWS))
        )
    assert sorted(outcome.repeated for outcome in outcomes) == [False, True]
    assert [outcome.rows for outcome in outcomes] == [3, 3]
    assert await target.count("report") == 3


async def test_replace_swaps_at_commit_while_a_reader_sees_the_old_rows(target: Target) -> None:
    async with target.database() as database:
        await database.copy(request_of(step="old"), batches(ROWS))
        seen: list[int] = []
        halfway = asyncio.Event()
        read = asyncio.Event()

        async def new_rows() -> AsyncIterator[Batch]:
            yield COLUMNS, [[10, "ten", 100], [11, "eleven", 110]]
            halfway.set()
            await asyncio.wait_for(read.wait(), 10)
            yield COLUMNS, [[12, "twelve", 120]]

        async def reader() -> None:
            await asyncio.wait_for(halfway.wait(), 10)
            seen.append(await target.count("report"))
            read.set()

        outcome, _ = await asyncio.gather(
            database.copy(request_of(CopyMode.REPLACE, step="new"), new_rows()), reader()
        )
    assert seen == [3]
    assert outcome.rows == 3
    assert await target.rows("report") == [(10, "ten", 100), (11, "eleven", 110), (12, "twelve", 120)]


async def test_replace_keeps_readers_to_whole_tables(target: Target) -> None:
    old = [[i, "old", i] for i in range(200)]
    new = [[i, "new", i] for i in range(300)]
    async with target.database() as database:
        await database.copy(request_of(step="old"), batches(old))
        done = asyncio.Event()
        counts: set[int] = set()

        async def reader() -> None:
            while not done.is_set():
                counts.add(await target.count("report"))

        reading = asyncio.create_task(reader())
        try:
            await database.copy(request_of(CopyMode.REPLACE, step="new"), batches(new, size=7))
        finally:
            done.set()
            await reading
    counts.add(await target.count("report"))
    assert counts <= {200, 300}
    assert 300 in counts
    assert {row[1] for row in await target.rows("report")} == {"new"}


async def test_upsert_updates_rows_by_key_and_adds_the_rest(target: Target) -> None:
    async with target.database() as database:
        await database.copy(request_of(CopyMode.UPSERT, ("id",), step="first"), batches(ROWS))
        outcome = await database.copy(
            request_of(CopyMode.UPSERT, ("id",), step="second"),
            batches([[2, "TWO", 22], [4, "four", 40]]),
        )
    assert outcome.rows == 2
    assert await target.rows("report") == [(1, "one", 10), (2, "TWO", 22), (3, "three", 30), (4, "four", 40)]


async def test_an_upsert_of_two_rows_with_one_key_is_refused_naming_it(target: Target) -> None:
    async with target.database() as database:
        await database.copy(request_of(CopyMode.UPSERT, ("id",), step="first"), batches(ROWS))
        with pytest.raises(DatabaseError, match="more than one row with key \\(id=2\\)"):
            await database.copy(
                request_of(CopyMode.UPSERT, ("id",), step="second"),
                batches([[2, "a", 1], [4, "b", 2], [2, "c", 3]]),
            )
    assert await target.rows("report") == [tuple(row) for row in ROWS]


async def test_merge_deletes_the_rows_whose_keys_the_source_has_not(target: Target) -> None:
    keys = ("id", "name")
    async with target.database() as database:
        await database.copy(request_of(CopyMode.MERGE, keys, step="first"), batches(ROWS))
        await database.copy(
            request_of(CopyMode.MERGE, keys, step="second"), batches([[2, "two", 99], [5, "five", 50]])
        )
    assert await target.rows("report") == [(2, "two", 99), (5, "five", 50)]


@pytest.mark.parametrize("mode", list(CopyMode))
async def test_a_source_failing_mid_copy_leaves_the_table_as_it_was(target: Target, mode: CopyMode) -> None:
    keys = ("id",) if mode in (CopyMode.UPSERT, CopyMode.MERGE) else ()
    async with target.database() as database:
        await database.copy(request_of(CopyMode.UPSERT, ("id",), step="before"), batches(ROWS))
        with pytest.raises(RuntimeError, match="broke off"):
            await database.copy(
                request_of(mode, keys), batches([[7, "x", 0], [8, "y", 0], [9, "z", 0]], size=1, fail_after=2)
            )
        assert await target.rows("report") == [tuple(row) for row in ROWS]
        # Nothing was recorded either: the next try copies.
        again = await database.copy(request_of(mode, keys), batches([[10, "ten", 100]]))
    assert (again.rows, again.repeated) == (1, False)
    assert (10, "ten", 100) in await target.rows("report")


TYPED = [
    Column(name="id", type="long"),
    Column(name="flag", type="bool"),
    Column(name="small", type="int"),
    Column(name="real", type="real"),
    Column(name="amount", type="decimal"),
    Column(name="text", type="string"),
    Column(name="uid", type="guid"),
    Column(name="at", type="datetime"),
    Column(name="span", type="timespan"),
    Column(name="doc", type="dynamic"),
]
GUID = "6f1c1c2e-8a4b-4f3e-9d2a-0c5b7e9f1a23"
TYPED_ROWS = [
    [
        1,
        True,
        -5,
        1.5,
        "12345678901234567890.123456789012345678",
        "Grüße, 東京 🚀 'quoted' \\ back",
        GUID,
        "2026-03-01T09:30:00.1234567+01:00",
        "1.02:03:04.5000000",
        {"a": [1, "x"], "b": None, "ü": True},
    ],
    [2, False, 0, "Infinity", "-0.5", "", GUID.upper(), "2026-12-07T00:00:00Z", "-00:00:01", [1, 2, 3]],
    [2**40, None, None, None, None, None, None, None, None, None],
]


def decoded(document: Any) -> Any:
    """A JSON column's value: SQLAlchemy decodes PostgreSQL's JSONB itself, MariaDB's JSON is text."""
    return json.loads(document) if isinstance(document, str) else document


async def test_kusto_types_round_trip(target: Target) -> None:
    async with target.database() as database:
        await database.copy(request_of(), batches(TYPED_ROWS, TYPED))
    first, second, nulls = await target.rows("report")
    postgres = target.kind == "postgresql"

    def instant(value: dt.datetime) -> dt.datetime:
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)

    assert first[:4] == (1, True, -5, 1.5)
    assert first[4] == Decimal("12345678901234567890.123456789012345678")
    assert first[5] == "Grüße, 東京 🚀 'quoted' \\ back"
    assert str(first[6]) == GUID
    assert instant(first[7]) == dt.datetime(2026, 3, 1, 8, 30, 0, 123456, tzinfo=dt.UTC)
    span = dt.timedelta(days=1, hours=2, minutes=3, seconds=4, milliseconds=500)
    assert first[8] == (span if postgres else 937845000000)
    assert decoded(first[9]) == {"a": [1, "x"], "b": None, "ü": True}

    assert second[1] in (False, 0)
    assert second[3] == (float("inf") if postgres else None)  # MariaDB has no infinity
    assert second[4] == Decimal("-0.5")
    assert second[5] == ""
    assert str(second[6]) == GUID
    assert instant(second[7]) == dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
    assert second[8] == (dt.timedelta(seconds=-1) if postgres else -10_000_000)
    assert decoded(second[9]) == [1, 2, 3]

    assert nulls == (2**40, *[None] * 9)


async def test_an_existing_table_of_another_type_is_refused_naming_the_column(target: Target) -> None:
    await target.execute("CREATE TABLE report (id BIGINT, name VARCHAR(20), n DATE)")
    await target.execute("INSERT INTO report (id, name, n) VALUES (1, 'kept', NULL)")
    async with target.database() as database:
        with pytest.raises(DatabaseError) as refused:
            await database.copy(request_of(), batches(ROWS))
    assert refused.value.code is ErrorCode.TABLE_MISMATCH
    assert "'n'" in refused.value.message
    assert "DATE" in refused.value.message
    assert "int" in refused.value.message
    assert await target.rows("report") == [(1, "kept", None)]


async def test_an_existing_table_without_a_column_is_refused_naming_it(target: Target) -> None:
    await target.execute("CREATE TABLE report (id BIGINT, name TEXT)")
    async with target.database() as database:
        with pytest.raises(DatabaseError, match="has no column 'n'") as refused:
            await database.copy(request_of(), batches(ROWS))
    assert refused.value.code is ErrorCode.TABLE_MISMATCH
    assert await target.count("report") == 0


async def test_upsert_into_a_table_without_a_unique_key_is_refused(target: Target) -> None:
    await target.execute("CREATE TABLE report (id BIGINT, name TEXT, n INTEGER)")
    async with target.database() as database:
        with pytest.raises(DatabaseError, match=r"unique index on exactly \(id\)"):
            await database.copy(request_of(CopyMode.UPSERT, ("id",)), batches(ROWS))


async def test_a_source_over_the_row_cap_writes_nothing(target: Target) -> None:
    async with target.database() as database:
        await database.copy(request_of(step="before"), batches(ROWS))
    async with target.database(max_rows=4) as capped:
        with pytest.raises(DatabaseError) as refused:
            await capped.copy(request_of(), batches(ROWS + ROWS))
    assert refused.value.code is ErrorCode.RESULT_TOO_LARGE
    assert "max_rows=4" in refused.value.message
    assert repr(target.kind) in refused.value.message
    assert await target.count("report") == 3


async def test_a_source_over_the_byte_cap_writes_nothing(target: Target) -> None:
    async with target.database() as database:
        await database.copy(request_of(step="before"), batches(ROWS[:1]))
    async with target.database(max_bytes=100) as capped:
        with pytest.raises(DatabaseError, match="max_bytes=100") as refused:
            await capped.copy(request_of(), batches([[i, "x" * 30, i] for i in range(10)]))
    assert refused.value.code is ErrorCode.RESULT_TOO_LARGE
    assert await target.count("report") == 1


async def test_a_database_lost_mid_copy_is_a_retryable_error_and_writes_nothing(target: Target) -> None:
    url = make_url(target.url)
    async with Proxy(url.host or "127.0.0.1", url.port or 0) as proxy:
        plain = make_url(target.config.url or "")
        through = target.config.model_copy(
            update={"url": sa_url(plain.drivername, plain.username, plain.host, proxy.port, plain.database)}
        )

        async def cut_after_first_batch() -> AsyncIterator[Batch]:
            yield COLUMNS, ROWS[:2]
            proxy.cut()
            yield COLUMNS, ROWS[2:]

        async with SqlDatabase(target.kind, through) as database:
            await database.copy(request_of(step="before"), batches(ROWS[:1]))
            with pytest.raises(DatabaseError) as lost:
                await database.copy(request_of(), cut_after_first_batch())
    assert lost.value.code is ErrorCode.DATABASE_UNAVAILABLE
    assert lost.value.retryable
    assert await target.rows("report") == [tuple(ROWS[0])]


async def test_a_table_outside_the_allowlist_is_refused(target: Target) -> None:
    async with target.database() as database:
        with pytest.raises(DatabaseError, match="'secrets' is not one database") as refused:
            await database.copy(CopyRequest(run_id="r", step_id="s", table="secrets"), batches(ROWS))
    assert refused.value.code is ErrorCode.TABLE_NOT_ALLOWED


async def test_an_unknown_key_column_is_refused_naming_it(target: Target) -> None:
    async with target.database() as database:
        with pytest.raises(DatabaseError, match="key column 'day' is not a column") as refused:
            await database.copy(request_of(CopyMode.UPSERT, ("day",)), batches(ROWS))
    assert refused.value.code is ErrorCode.UNKNOWN_COLUMN


async def test_an_empty_source_with_known_columns_creates_the_table(target: Target) -> None:
    request = CopyRequest(run_id="r", step_id="s", table="daily_summary", columns=tuple(COLUMNS))
    async with target.database() as database:
        outcome = await database.copy(request, batches([]))
    assert outcome.rows == 0
    assert await target.count("daily_summary") == 0


async def test_a_bad_value_is_refused_naming_its_column(target: Target) -> None:
    columns = [Column(name="id", type="long"), Column(name="uid", type="guid")]
    async with target.database() as database:
        with pytest.raises(DatabaseError, match="column 'uid': 'not-a-guid' is not a Kusto guid"):
            await database.copy(request_of(), batches([[1, str(uuid.uuid4())], [2, "not-a-guid"]], columns))


async def test_an_empty_source_replaces_an_existing_table_with_no_rows(target: Target) -> None:
    async with target.database() as database:
        await database.copy(request_of(step="before"), batches(ROWS))
        emptied = await database.copy(request_of(CopyMode.REPLACE, step="known"), batches([]))
    assert emptied.rows == 0
    assert await target.count("report") == 0


#: A copy in a process of its own that writes its first batch, says so, and waits to be killed.
COPY_UNTIL_KILLED = """
import asyncio, sys
from common.contracts.copies import CopyMode
from common.contracts.results import Column
from common.platform.connections import DatabaseConfig, SecretRef
from common.platform.sql import CopyRequest, SqlDatabase

async def main() -> None:
    config = DatabaseConfig(url_secret=SecretRef(env="COPY_URL"), tables=["report"])
    kinds = {"id": "long", "name": "string", "n": "int"}
    columns = [Column(name=name, type=kind) for name, kind in kinds.items()]

    async def source():
        yield columns, [[i, "first", i] for i in range(1000)]
        print("halfway", flush=True)
        await asyncio.Event().wait()
        yield columns, [[i, "never", i] for i in range(1000, 2000)]

    async with SqlDatabase("target", config) as database:
        request = CopyRequest(run_id="run-1", step_id="copy", table="report", mode=CopyMode(sys.argv[1]))
        await database.copy(request, source())

asyncio.run(main())
"""


@pytest.mark.parametrize("mode", [CopyMode.APPEND, CopyMode.REPLACE])
async def test_a_copy_killed_mid_way_is_redone_once(target: Target, mode: CopyMode) -> None:
    async with target.database() as database:
        await database.copy(request_of(step="before"), batches(ROWS))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        COPY_UNTIL_KILLED,
        mode.value,
        cwd=Path(__file__).parents[3],
        env={**os.environ, "COPY_URL": target.url},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        assert line == b"halfway\n"
        assert await target.count("report") == 3
    finally:
        process.kill()
        await process.wait()
    assert process.returncode == -signal.SIGKILL
    assert await target.count("report") == 3
    rows = [[i, "redo", i] for i in range(100, 1100)]
    async with target.database() as database:
        redone = await database.copy(request_of(mode), batches(rows, size=250))
        again = await database.copy(request_of(mode), batches(rows, size=250))
    assert (redone.rows, redone.repeated, again.repeated) == (1000, False, True)
    expected = len(rows) + (3 if mode is CopyMode.APPEND else 0)
    assert await target.count("report") == expected


async def test_replace_keeps_the_tables_own_unique_index(target: Target) -> None:
    await target.execute("CREATE TABLE report (id BIGINT NOT NULL, name TEXT, n INTEGER, extra INTEGER)")
    await target.execute("CREATE UNIQUE INDEX report_by_id ON report (id)")
    async with target.database() as database:
        await database.copy(request_of(CopyMode.REPLACE, step="replace"), batches(ROWS))
        # Upsert needs the unique index: it is there after the swap.
        await database.copy(request_of(CopyMode.UPSERT, ("id",), step="upsert"), batches([[1, "ONE", 11]]))
    assert await target.rows("report") == [(1, "ONE", 11, None), (2, "two", 20, None), (3, "three", 30, None)]


async def test_a_database_that_does_not_answer_is_a_retryable_error(target: Target) -> None:
    async with Proxy("127.0.0.1", 9) as proxy:  # nothing listens on the discard port: each line is cut
        plain = make_url(target.config.url or "")
        away = target.config.model_copy(
            update={"url": sa_url(plain.drivername, plain.username, plain.host, proxy.port, plain.database)}
        )
        async with SqlDatabase(target.kind, away) as database:
            with pytest.raises(DatabaseError, match=f"database '{target.kind}' could not be reached") as lost:
                await database.copy(request_of(), batches(ROWS))
    assert lost.value.code is ErrorCode.DATABASE_UNAVAILABLE
    assert lost.value.retryable
