"""Schema migrations: the upgrade of a database made before them, the models against the revisions,
replicas migrating together, refusing an old or a newer schema, SQLite's journal and busy timeout."""

from __future__ import annotations

import asyncio
import datetime as dt
import fnmatch
import importlib
import pkgutil
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
import structlog.testing
import yaml
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine

from common.contracts.errors import ConfigurationError
from common.contracts.flows import Flow
from common.platform import schema
from common.platform.config import load_settings
from common.platform.database import SQLITE_BUSY_TIMEOUT_MS, SqlStore, connect
from common.platform.schema import SchemaError, ensure_schema, migrate, state
from services.history.dead_letters import DeadLetterStore
from services.history.store import HistoryStore
from services.launcher.tables import metadata as models
from services.notifier.ledger import Ledger
from services.trigger.store import FlowStore
from tests.common.platform import legacy_schema as legacy

HEAD = schema.head()
T0 = dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'history.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = connect(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def _create_legacy(engine: AsyncEngine, *parts: sa.MetaData) -> None:
    """The tables as each store created them before migrations: its own metadata's create_all."""
    for part in parts or legacy.ALL:
        async with engine.begin() as conn:
            await conn.run_sync(part.create_all)


def _document(name: str, trigger: dict[str, Any]) -> dict[str, Any]:
    """A flow as FlowStore saved it."""
    flow = Flow.model_validate(
        {
            "name": name,
            "connection": "local",
            "database": "Samples",
            "trigger": trigger,
            "steps": [{"id": "q", "action": "run_query", "query": "StormEvents | count"}],
        }
    )
    return flow.model_dump(mode="json", exclude_none=True)


def _legacy_rows() -> dict[sa.Table, list[dict[str, Any]]]:
    """A row or two in every table, with every column set (nulls where the column allows them)."""
    return {
        legacy.runs: [
            {
                "run_id": "run-1",
                "status": "running",
                "flow": "storms-daily",
                "description": "Daily storm report",
                "trigger_kind": "cron",
                "scheduled_for": T0,
                "parent_run_id": None,
                "connection": "local",
                "database": "Samples",
                "parameters": {"min_damage": 1000},
                "step_count": 3,
                "submitted_at": T0,
                "started_at": T0 + dt.timedelta(seconds=1),
                "finished_at": None,
                "failed_step": None,
                "error_code": None,
                "error_message": None,
                "updated_at": T0 + dt.timedelta(seconds=2),
            },
            {
                "run_id": "run-2",
                "status": "failed",
                "flow": None,
                "description": None,
                "trigger_kind": "adhoc",
                "scheduled_for": None,
                "parent_run_id": "run-1",
                "connection": "local",
                "database": "Samples",
                "parameters": {},
                "step_count": 1,
                "submitted_at": T0,
                "started_at": T0,
                "finished_at": T0 + dt.timedelta(minutes=1),
                "failed_step": "by_state",
                "error_code": "KustoSyntaxError",
                "error_message": "no such table: Storms",
                "updated_at": T0 + dt.timedelta(minutes=1),
            },
        ],
        legacy.steps: [
            {
                "run_id": "run-1",
                "step_id": "by_state",
                "attempt": 1,
                "position": 1,
                "flow_step": "by_state",
                "kind": "query",
                "service": "query_worker",
                "status": "succeeded",
                "queued_at": None,
                "started_at": T0,
                "finished_at": T0 + dt.timedelta(seconds=1),
                "row_count": 10,
                "error_code": None,
                "error_message": None,
                "retryable": None,
                "artifacts": {"result": "runs/run-1/by_state/result.json"},
                "detail": {"query": "StormEvents | count"},
            },
            {
                "run_id": "run-2",
                "step_id": "by_state",
                "attempt": 2,
                "position": 1,
                "flow_step": "by_state",
                "kind": "query",
                "service": "query_worker",
                "status": "failed",
                "queued_at": T0,
                "started_at": T0,
                "finished_at": T0 + dt.timedelta(minutes=1),
                "row_count": None,
                "error_code": "KustoSyntaxError",
                "error_message": "no such table: Storms",
                "retryable": False,
                "artifacts": None,
                "detail": None,
            },
        ],
        legacy.dead_letters: [
            {
                "id": "dl1",
                "run_id": "run-2",
                "step_id": "by_state",
                "attempt": 2,
                "routing_key": "query",
                "error_code": "DeadLettered",
                "error_message": "the broker's delivery limit was reached",
                "body": '{"run_id": "run-2"}',
                "dead_at": T0 + dt.timedelta(minutes=2),
            }
        ],
        legacy.flows: [
            {
                "name": "storms-daily",
                "document": _document("storms-daily", {"cron": "0 8 * * *", "timezone": "Europe/Berlin"}),
                "version": 3,
                "enabled": True,
                "trigger_kind": "cron",
                "after_flow": None,
                "anchor": T0 - dt.timedelta(days=1),
                "created_at": T0 - dt.timedelta(days=2),
                "updated_at": T0 - dt.timedelta(days=1),
            },
            {
                "name": "after-storms",
                "document": _document("after-storms", {"after": {"flow": "storms-daily"}}),
                "version": 1,
                "enabled": False,
                "trigger_kind": "after",
                "after_flow": "storms-daily",
                "anchor": T0,
                "created_at": T0,
                "updated_at": T0,
            },
        ],
        legacy.flow_slots: [
            {"flow": "storms-daily", "slot": "2026-11-30T08:00:00Z", "run_id": "run-1", "fired_at": T0},
            {"flow": "after-storms", "slot": "after:run-1", "run_id": "run-3", "fired_at": T0},
        ],
        # What FlowStore.create_schema inserted, moved on by seven changes.
        legacy.flow_changes: [{"id": 1, "revision": 7}],
        legacy.run_requests: [
            {"flow": "storms-daily", "key": "retry-safe-1", "run_id": "run-1", "created_at": T0},
        ],
        legacy.deliveries: [
            {
                "run_id": "run-1",
                "step_id": "mail",
                "item": "all",
                "state": "sent",
                "claimed_at": T0,
                "sent_at": T0 + dt.timedelta(seconds=3),
                "detail": {"message_id": "<run-1.mail@adxflow>"},
            },
            {
                "run_id": "run-1",
                "step_id": "mail",
                "item": "row-2",
                "state": "claimed",
                "claimed_at": T0,
                "sent_at": None,
                "detail": {},
            },
        ],
    }


async def _read(engine: AsyncEngine, tables: Iterator[sa.Table] | list[sa.Table]) -> dict[str, list[Any]]:
    """Every row of each table, in primary-key order, through the frozen definitions (same types)."""
    found: dict[str, list[Any]] = {}
    async with engine.connect() as conn:
        for table in tables:
            query = sa.select(table).order_by(*table.primary_key.columns)
            found[table.name] = [dict(row) for row in (await conn.execute(query)).mappings()]
    return found


def _indexes(connection: sa.Connection) -> dict[str, set[str]]:
    inspector = sa.inspect(connection)
    return {
        name: {index["name"] for index in inspector.get_indexes(name)}
        for name in ("runs", "dead_letters", "flow_slots")
    }


async def test_a_database_made_before_migrations_upgrades_with_every_row_kept(engine: AsyncEngine) -> None:
    await _create_legacy(engine)
    rows = _legacy_rows()
    async with engine.begin() as conn:
        for table, values in rows.items():
            await conn.execute(table.insert(), values)
    before = await _read(engine, list(rows))
    assert all(before.values()), "every table holds rows before the upgrade"
    found = await state(engine)
    assert (found.current, found.unversioned_tables) == (None, True)

    migration = await migrate(engine)

    assert migration.before is None
    assert migration.applied == (
        "0001_baseline",
        "0002_sweep_indexes",
        "0003_claim_leases",
        "0004_run_trace_ids",
        "0005_scopes",
        "0006_alerts",
        "0007_alert_notices",
        "0008_flow_versions",
        "0009_dry_runs",
    )
    assert await _read(engine, list(rows)) == before
    async with engine.connect() as conn:
        indexes = await conn.run_sync(_indexes)
        version = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalars().all()
    assert "ix_runs_status_updated_at" in indexes["runs"]
    assert "ix_dead_letters_run_id_step_id" in indexes["dead_letters"]
    assert version == [HEAD]
    # The stores read what was there: the flows' revision went on from where it was.
    store = FlowStore(str(engine.url.render_as_string(hide_password=False)))
    try:
        assert await store.revision() == 7
        assert [stored.flow.name for stored in await store.all()] == ["after-storms", "storms-daily"]
    finally:
        await store.close()


async def test_a_database_where_only_the_notifier_ran_gets_the_other_tables(engine: AsyncEngine) -> None:
    await _create_legacy(engine, legacy.notifier)
    sent = _legacy_rows()[legacy.deliveries]
    async with engine.begin() as conn:
        await conn.execute(legacy.deliveries.insert(), sent)
    before = await _read(engine, [legacy.deliveries])

    await migrate(engine)

    assert await _read(engine, [legacy.deliveries]) == before
    assert len(before["deliveries"]) == len(sent)
    async with engine.connect() as conn:
        tables = set(await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names()))
        changes = (await conn.execute(sa.select(legacy.flow_changes))).all()
    assert set(models.tables) <= tables
    assert [tuple(row) for row in changes] == [(1, 0)]


async def test_a_foreign_table_of_the_same_name_is_refused_and_nothing_is_left_half_done(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE deliveries (id INTEGER PRIMARY KEY, parcel TEXT)"))

    with pytest.raises(SchemaError, match=r"table 'deliveries' exists but is not adxflow's") as refused:
        await migrate(engine)

    assert "parcel" in refused.value.message
    assert "claimed_at" in refused.value.message
    async with engine.connect() as conn:
        tables = set(await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names()))
    # The tables the baseline had created before it met deliveries went with the rollback.
    assert tables == {"deliveries"}


async def test_the_migrated_schema_is_exactly_the_models(engine: AsyncEngine) -> None:
    """What makes CI fail when a model changes without a revision (or a revision without the model)."""
    await migrate(engine)
    async with engine.connect() as conn:
        diff = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), models))
    assert diff == []


def _subclasses(kind: type[SqlStore]) -> Iterator[type[SqlStore]]:
    for sub in kind.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_the_models_compared_are_every_stores_tables() -> None:
    # A store added later whose tables services.launcher.tables does not gather would escape the diff.
    for name in ("trigger", "query_worker", "render", "notifier", "history"):
        package = importlib.import_module(f"services.{name}")
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if not module.name.endswith(".__main__"):
                importlib.import_module(module.name)
    stores = set(_subclasses(SqlStore))
    assert {FlowStore, HistoryStore, DeadLetterStore, Ledger} <= stores
    for store in stores:
        tables = getattr(store, "metadata", sa.MetaData()).tables
        assert set(tables) <= set(models.tables), store


async def test_an_empty_database_at_head_and_migrating_again_does_nothing(engine: AsyncEngine) -> None:
    first = await migrate(engine)
    again = await migrate(engine)
    assert first.applied == (
        "0001_baseline",
        "0002_sweep_indexes",
        "0003_claim_leases",
        "0004_run_trace_ids",
        "0005_scopes",
        "0006_alerts",
        "0007_alert_notices",
        "0008_flow_versions",
        "0009_dry_runs",
    )
    assert (again.before, again.applied) == (HEAD, ())
    async with engine.connect() as conn:
        changes = (await conn.execute(sa.select(legacy.flow_changes))).all()
    assert [tuple(row) for row in changes] == [(1, 0)]


async def test_replicas_migrating_one_fresh_database_together_both_succeed(database_url: str) -> None:
    engines = [connect(database_url) for _ in range(3)]
    try:
        migrations = await asyncio.gather(*(migrate(engine) for engine in engines))
        after = await state(engines[0])
    finally:
        await asyncio.gather(*(engine.dispose() for engine in engines))
    # One of them did the work; the others waited for its lock and found the schema done.
    assert sorted(len(migration.applied) for migration in migrations) == [0, 0, 9]
    assert after.at_head


def _upgrade_to(revision: str) -> Any:
    def upgrade(connection: sa.Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(schema.MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    return upgrade


def _downgrade_to(revision: str) -> Any:
    def downgrade(connection: sa.Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(schema.MIGRATIONS))
        config.attributes["connection"] = connection
        command.downgrade(config, revision)

    return downgrade


async def test_check_mode_refuses_an_older_schema_naming_adxflow_migrate(engine: AsyncEngine) -> None:
    with pytest.raises(SchemaError, match=r"schema is empty.*Run `adxflow migrate`"):
        await ensure_schema(engine, "check")
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade_to("0001_baseline"))
    with pytest.raises(SchemaError, match=r"at revision '?0001_baseline'?.*Run `adxflow migrate`"):
        await ensure_schema(engine, "check")
    assert (await state(engine)).pending == (
        "0002_sweep_indexes",
        "0003_claim_leases",
        "0004_run_trace_ids",
        "0005_scopes",
        "0006_alerts",
        "0007_alert_notices",
        "0008_flow_versions",
        "0009_dry_runs",
    )

    await ensure_schema(engine, "auto")

    await ensure_schema(engine, "check")
    async with engine.connect() as conn:
        indexes = await conn.run_sync(_indexes)
    assert "ix_runs_status_updated_at" in indexes["runs"]


async def test_claim_leases_arrive_on_slots_and_run_requests_recorded_before_them_as_settled(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade_to("0002_sweep_indexes"))
        await conn.execute(
            sa.text("INSERT INTO flow_slots (flow, slot, run_id, fired_at) VALUES ('f', 's', 'r', :at)"),
            {"at": T0},
        )
        await conn.execute(
            sa.text("INSERT INTO run_requests (flow, key, run_id, created_at) VALUES ('f', 'k', 'r', :at)"),
            {"at": T0},
        )

    migration = await migrate(engine)

    assert migration.applied == (
        "0003_claim_leases",
        "0004_run_trace_ids",
        "0005_scopes",
        "0006_alerts",
        "0007_alert_notices",
        "0008_flow_versions",
        "0009_dry_runs",
    )
    async with engine.connect() as conn:
        indexes = await conn.run_sync(_indexes)
        slots = (await conn.execute(sa.text("SELECT run_id, claimed_until FROM flow_slots"))).all()
        keys = (await conn.execute(sa.text("SELECT run_id, claimed_until FROM run_requests"))).all()
    assert "ix_flow_slots_claimed_until" in indexes["flow_slots"]
    # Null: settled, as every claim before leases was once its transaction committed.
    assert [tuple(row) for row in slots] == [("r", None)]
    assert [tuple(row) for row in keys] == [("r", None)]
    store = FlowStore(str(engine.url.render_as_string(hide_password=False)))
    try:
        assert await store.take_over(T0 + dt.timedelta(days=1), lease=dt.timedelta(minutes=2)) == []
    finally:
        await store.close()


async def test_trace_ids_arrive_on_runs_and_runs_recorded_before_them_have_none(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade_to("0003_claim_leases"))
        await conn.execute(
            sa.text(
                "INSERT INTO runs (run_id, status, flow, updated_at) VALUES ('r', 'succeeded', 'f', :at)"
            ),
            {"at": T0},
        )

    migration = await migrate(engine)

    assert migration.applied == (
        "0004_run_trace_ids",
        "0005_scopes",
        "0006_alerts",
        "0007_alert_notices",
        "0008_flow_versions",
        "0009_dry_runs",
    )
    store = HistoryStore(str(engine.url.render_as_string(hide_password=False)))
    try:
        run = await store.get_run("r")
    finally:
        await store.close()
    assert run is not None
    # Null: not traced, as no run before the column was.
    assert run["run_id"] == "r"
    assert run["trace_id"] is None


def _scope_schema(connection: sa.Connection) -> dict[str, Any]:
    inspector = sa.inspect(connection)
    tables = set(inspector.get_table_names())
    found: dict[str, Any] = {
        "tables": {"scopes", "scope_items"} & tables,
        "runs": {column["name"] for column in inspector.get_columns("runs")},
        "runs_indexes": {index["name"] for index in inspector.get_indexes("runs")},
    }
    if "scope_items" in tables:
        found["item_indexes"] = {
            index["name"]: index["column_names"] for index in inspector.get_indexes("scope_items")
        }
        found["item_unique"] = [
            (unique["name"], unique["column_names"])
            for unique in inspector.get_unique_constraints("scope_items")
        ]
        found["scope_key"] = inspector.get_pk_constraint("scopes")["constrained_columns"]
        found["item_key"] = inspector.get_pk_constraint("scope_items")["constrained_columns"]
    return found


_RUN_0004 = sa.text(
    "INSERT INTO runs (run_id, status, flow, parent_run_id, trace_id, updated_at) "
    "VALUES ('r', 'succeeded', 'f', 'p', :trace, :at)"
)
_SCOPE_COLUMNS = sa.text("SELECT run_id, parent_run_id, scope_step, iteration, branch FROM runs")


async def test_scopes_arrive_and_runs_recorded_before_them_are_nobodys_iterations(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade_to("0004_run_trace_ids"))
        await conn.execute(_RUN_0004, {"trace": "ab" * 16, "at": T0})
        before = await conn.run_sync(_scope_schema)

    migration = await migrate(engine)

    assert (migration.before, migration.applied) == (
        "0004_run_trace_ids",
        ("0005_scopes", "0006_alerts", "0007_alert_notices", "0008_flow_versions", "0009_dry_runs"),
    )
    assert before["tables"] == set()
    assert {"scope_step", "iteration", "branch"}.isdisjoint(before["runs"])
    async with engine.connect() as conn:
        after = await conn.run_sync(_scope_schema)
        [run] = (await conn.execute(_SCOPE_COLUMNS)).all()
    # Null: a run that is nobody's child iteration or branch, as every run before scopes was.
    assert tuple(run) == ("r", "p", None, None, None)
    assert after["tables"] == {"scopes", "scope_items"}
    assert {"scope_step", "iteration", "branch"} <= after["runs"]
    assert "ix_runs_parent_scope_iteration" in after["runs_indexes"]
    # (PostgreSQL lists the unique constraint's own index among them too.)
    assert (
        after["item_indexes"].items()
        >= {
            "ix_scope_items_started_by": ["run_id", "step_id", "started_by"],
            "ix_scope_items_status": ["run_id", "step_id", "status", "item"],
        }.items()
    )
    assert after["item_unique"] == [("uq_scope_items_child_run_id", ["child_run_id"])]
    assert (after["scope_key"], after["item_key"]) == (["run_id", "step_id"], ["run_id", "step_id", "item"])
    store = HistoryStore(str(engine.url.render_as_string(hide_password=False)))
    try:
        kept = await store.get_run("r")
    finally:
        await store.close()
    assert kept is not None
    assert (kept["parent_run_id"], kept["trace_id"]) == ("p", "ab" * 16)


async def test_the_scopes_revision_downgrades_to_the_one_before_keeping_the_runs(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade_to("0004_run_trace_ids"))
        await conn.execute(_RUN_0004, {"trace": None, "at": T0})
    await migrate(engine)

    async with engine.begin() as conn:
        await conn.run_sync(_downgrade_to("0004_run_trace_ids"))
        after = await conn.run_sync(_scope_schema)
        runs = (await conn.execute(sa.text("SELECT run_id, parent_run_id FROM runs"))).all()

    assert after["tables"] == set()
    assert {"scope_step", "iteration", "branch"}.isdisjoint(after["runs"])
    assert "ix_runs_parent_scope_iteration" not in after["runs_indexes"]
    assert [tuple(row) for row in runs] == [("r", "p")]
    assert (await state(engine)).current == "0004_run_trace_ids"
    assert (await migrate(engine)).applied == (
        "0005_scopes",
        "0006_alerts",
        "0007_alert_notices",
        "0008_flow_versions",
        "0009_dry_runs",
    )


async def test_check_mode_refuses_tables_from_before_migrations(engine: AsyncEngine) -> None:
    await _create_legacy(engine)
    with pytest.raises(SchemaError, match=r"from before schema migrations.*Run `adxflow migrate`"):
        await ensure_schema(engine, "check")


@pytest.mark.parametrize("mode", ["auto", "check"])
async def test_a_schema_newer_than_the_code_is_run_on_as_it_is_with_a_warning(
    engine: AsyncEngine, mode: schema.MigrateMode
) -> None:
    # A rolling upgrade: a newer release migrated, and a replica of this one (re)starts.
    await migrate(engine)
    async with engine.begin() as conn:
        await conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
    with structlog.testing.capture_logs() as logs:
        await ensure_schema(engine, mode)
    found = await state(engine)
    assert (found.current, found.newer, found.pending) == ("0099_from_the_future", True, ())
    assert "newer than this release" in found.describe()
    [warning] = [entry for entry in logs if entry["log_level"] == "warning"]
    assert warning["revision"] == "0099_from_the_future"
    assert warning["release_head"] == schema.head()


async def test_a_store_migrates_through_its_own_name() -> None:
    store = Ledger("sqlite+aiosqlite:///:memory:")
    try:
        with pytest.raises(SchemaError, match="adxflow migrate"):
            await store.ensure_schema("check")
    finally:
        await store.close()


async def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    engine = connect(f"sqlite+aiosqlite:///{tmp_path / 'nested' / 'history.db'}")
    try:
        # Two connections open at once: each one the pool opened was set up, not only the first.
        async with engine.connect() as first, engine.connect() as second:
            for conn in (first, second):
                assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar_one() == "wal"
                assert (
                    await conn.exec_driver_sql("PRAGMA busy_timeout")
                ).scalar_one() == SQLITE_BUSY_TIMEOUT_MS
    finally:
        await engine.dispose()
    assert SQLITE_BUSY_TIMEOUT_MS >= 5000


def test_revisions_are_one_line_with_ids_that_fit_alembic_version() -> None:
    scripts = list(schema._scripts().walk_revisions())
    assert [script.revision for script in reversed(scripts)] == [
        "0001_baseline",
        "0002_sweep_indexes",
        "0003_claim_leases",
        "0004_run_trace_ids",
        "0005_scopes",
        "0006_alerts",
        "0007_alert_notices",
        "0008_flow_versions",
        "0009_dry_runs",
    ]
    assert len(schema._scripts().get_heads()) == 1
    # alembic_version.version_num is VARCHAR(32) on PostgreSQL.
    assert all(len(script.revision) <= 32 for script in scripts)


def test_a_built_package_ships_the_migrations() -> None:
    """The container installs adxflow from a wheel: every file Alembic reads must be package data."""
    root = Path(__file__).resolve().parents[3]
    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    platform = root / "common" / "platform"
    files = [
        path.relative_to(platform).as_posix()
        for path in (platform / "migrations").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    assert "migrations/versions/0001_baseline.py" in files
    missing = [
        name
        for name in files
        if not any(fnmatch.fnmatch(name, glob) for glob in package_data["common.platform"])
    ]
    assert missing == []


def test_the_mode_is_read_from_adxflow_migrate(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().migrate == "auto"
    monkeypatch.setenv("ADXFLOW_MIGRATE", "check")
    assert load_settings().migrate == "check"
    monkeypatch.setenv("ADXFLOW_MIGRATE", "sometimes")
    with pytest.raises(ConfigurationError, match=r"ADXFLOW_MIGRATE='sometimes'"):
        load_settings()


#: What a revision's upgrade may not do, so that the previous release runs on the schema it leaves.
_REMOVING = ("drop_", "rename_", "alter_column")


def test_every_revision_only_adds_so_the_previous_release_runs_on_its_schema() -> None:
    import ast

    for path in sorted((schema.MIGRATIONS / "versions").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        [upgrade] = [
            node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "upgrade"
        ]
        calls = [
            node.func.attr
            for node in ast.walk(upgrade)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        ]
        removing = [name for name in calls if name.startswith(_REMOVING)]
        assert not removing, f"{path.name}'s upgrade removes or renames: {removing}"
        text = ast.get_source_segment(path.read_text(encoding="utf-8"), upgrade) or ""
        assert " DROP " not in text.upper(), f"{path.name}'s upgrade runs a DROP statement"


async def test_alerts_arrive_as_new_tables_and_the_runs_stay(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade_to("0005_scopes"))
        await conn.execute(_RUN_0004, {"trace": None, "at": T0})

    migration = await migrate(engine)

    assert (migration.before, migration.applied) == (
        "0005_scopes",
        ("0006_alerts", "0007_alert_notices", "0008_flow_versions", "0009_dry_runs"),
    )
    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda sync: set(sa.inspect(sync).get_table_names()))
        keys = await conn.run_sync(
            lambda sync: {
                name: sa.inspect(sync).get_pk_constraint(name)["constrained_columns"]
                for name in ("alerts", "alert_instances", "alert_evaluations")
            }
        )
        runs = (await conn.execute(sa.text("SELECT run_id, parent_run_id FROM runs"))).all()
    assert {"alerts", "alert_instances", "alert_transitions", "alert_evaluations"} <= tables
    assert keys == {
        "alerts": ["flow", "step_id"],
        "alert_instances": ["flow", "step_id", "key"],
        "alert_evaluations": ["flow", "step_id", "run_id"],
    }
    assert [tuple(row) for row in runs] == [("r", "p")]

    async with engine.begin() as conn:
        await conn.run_sync(_downgrade_to("0005_scopes"))
        left = await conn.run_sync(lambda sync: set(sa.inspect(sync).get_table_names()))
    assert {"alerts", "alert_instances", "alert_transitions", "alert_evaluations"}.isdisjoint(left)
    assert (await migrate(engine)).applied == (
        "0006_alerts",
        "0007_alert_notices",
        "0008_flow_versions",
        "0009_dry_runs",
    )


async def test_alert_notices_arrive_and_the_alerts_recorded_before_them_keep_their_state(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade_to("0006_alerts"))
        await conn.execute(
            sa.text(
                "INSERT INTO alert_instances (flow, step_id, key, state, since, pending_count) "
                "VALUES ('f', 'check', 'EventId=1', 'firing', :at, 0)"
            ),
            {"at": T0},
        )
        await conn.execute(
            sa.text(
                "INSERT INTO alert_transitions (flow, step_id, key, run_id, before, after, notice, at) "
                "VALUES ('f', 'check', 'EventId=1', 'r', 'ok', 'firing', 'firing', :at)"
            ),
            {"at": T0},
        )

    migration = await migrate(engine)

    assert (migration.before, migration.applied) == (
        "0006_alerts",
        ("0007_alert_notices", "0008_flow_versions", "0009_dry_runs"),
    )
    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda sync: set(sa.inspect(sync).get_table_names()))
        instance = (await conn.execute(sa.text("SELECT key, state, row FROM alert_instances"))).one()
        told = (await conn.execute(sa.text("SELECT notice, held FROM alert_transitions"))).one()
    assert {"alert_held", "alert_silences"} <= tables
    assert tuple(instance) == ("EventId=1", "firing", None)
    assert tuple(told) == ("firing", None)

    async with engine.begin() as conn:
        await conn.run_sync(_downgrade_to("0006_alerts"))
        left = await conn.run_sync(lambda sync: set(sa.inspect(sync).get_table_names()))
        kept = (await conn.execute(sa.text("SELECT key, state FROM alert_instances"))).one()
    assert {"alert_held", "alert_silences"}.isdisjoint(left)
    assert tuple(kept) == ("EventId=1", "firing")
    assert (await migrate(engine)).applied == ("0007_alert_notices", "0008_flow_versions", "0009_dry_runs")


async def test_flow_versions_arrive_with_each_flows_current_version_as_its_first_entry(
    engine: AsyncEngine,
) -> None:
    rows = _legacy_rows()[legacy.flows]
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade_to("0007_alert_notices"))
        await conn.execute(legacy.flows.insert(), rows)

    migration = await migrate(engine)

    assert (migration.before, migration.applied) == (
        "0007_alert_notices",
        ("0008_flow_versions", "0009_dry_runs"),
    )
    store = FlowStore(str(engine.url.render_as_string(hide_password=False)))
    try:
        assert [kept.version for kept in await store.versions("storms-daily")] == [3]
        storms = await store.version("storms-daily", 3)
        [after] = await store.versions("after-storms")
        assert storms is not None
        # The first entry is the version the flow is at, as it was stored, when it was saved.
        assert (storms.version, storms.saved_by, storms.restored_from) == (3, None, None)
        assert storms.saved_at == T0 - dt.timedelta(days=1)
        assert storms.document == rows[0]["document"]
        assert yaml.safe_load(storms.definition) == rows[0]["document"]
        # Dumped in the document's own field order, not sorted.
        assert [line.split(":")[0] for line in storms.definition.splitlines() if not line[0].isspace()][
            :2
        ] == ["name", "connection"]
        assert (after.version, after.saved_at) == (1, T0)

        # The next save is the flow's next version, beside the first.
        flow = Flow.model_validate({**rows[0]["document"], "description": "changed"})
        saved, _ = await store.save(flow, saved_by="local")
        history = await store.versions("storms-daily")
    finally:
        await store.close()
    assert saved.version == 4
    assert [(kept.version, kept.saved_by) for kept in history] == [(4, "local"), (3, None)]
    assert history[0].summary == "description changed"

    async with engine.begin() as conn:
        await conn.run_sync(_downgrade_to("0007_alert_notices"))
        left = await conn.run_sync(lambda sync: set(sa.inspect(sync).get_table_names()))
        flows_kept = (await conn.execute(sa.text("SELECT name, version FROM flows ORDER BY name"))).all()
    assert "flow_versions" not in left
    assert [tuple(row) for row in flows_kept] == [("after-storms", 1), ("storms-daily", 4)]


async def test_test_runs_arrive_as_columns_the_runs_before_them_are_real_runs_in(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade_to("0008_flow_versions"))
        await conn.execute(
            sa.text(
                "INSERT INTO runs (run_id, status, flow, parent_run_id, submitted_at, updated_at) "
                "VALUES ('r', 'succeeded', 'f', 'p', :at, :at)"
            ),
            {"at": T0},
        )

    migration = await migrate(engine)

    assert (migration.before, migration.applied) == ("0008_flow_versions", ("0009_dry_runs",))
    async with engine.connect() as conn:
        columns = await conn.run_sync(lambda sync: {c["name"] for c in sa.inspect(sync).get_columns("runs")})
        indexes = await conn.run_sync(lambda sync: {i["name"] for i in sa.inspect(sync).get_indexes("runs")})
        kept = (await conn.execute(sa.text("SELECT run_id, dry_run, test_recipient FROM runs"))).one()
    assert {"dry_run", "test_recipient"} <= columns
    assert "ix_runs_dry_run_submitted_at" in indexes
    # A run recorded before test runs existed is a real one.
    assert (kept.run_id, bool(kept.dry_run), kept.test_recipient) == ("r", False, None)
    store = HistoryStore(str(engine.url.render_as_string(hide_password=False)))
    try:
        listed = await store.list_runs(dry_run=False)
        tests = await store.list_runs(dry_run=True)
    finally:
        await store.close()
    assert [(run["run_id"], run["dry_run"]) for run in listed] == [("r", False)]
    assert tests == []

    async with engine.begin() as conn:
        await conn.run_sync(_downgrade_to("0008_flow_versions"))
        left = await conn.run_sync(lambda sync: {c["name"] for c in sa.inspect(sync).get_columns("runs")})
        runs = (await conn.execute(sa.text("SELECT run_id, parent_run_id FROM runs"))).all()
    assert {"dry_run", "test_recipient"}.isdisjoint(left)
    assert [tuple(row) for row in runs] == [("r", "p")]
    assert (await migrate(engine)).applied == ("0009_dry_runs",)
