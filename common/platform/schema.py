"""The database's schema, moved forward by Alembic revisions to the one this code runs on.

The revisions live beside this module (``migrations/versions``), written with ``op.*`` and
explicit columns: running them needs no models, so common imports no service. Every table
and column arrives through a revision; ``0001_baseline`` is the schema as it was before
migrations, and adopts the tables a database made then already has.

A service makes sure of the schema as it starts (:func:`ensure_schema`): by default it
migrates, under a lock so that replicas starting together wait for the first and then find
the schema done (``ADXFLOW_MIGRATE=auto``); with ``ADXFLOW_MIGRATE=check`` it only refuses a
schema older than its own, for deployments that run ``adxflow migrate`` as a job of their
own.

A schema newer than the code is what a rolling upgrade makes: the first replica of the new
release migrates while replicas of the previous one still run, and may restart. It is
accepted with a warning, because of the rule every revision keeps: it only adds (tables,
nullable or defaulted columns, indexes) and never drops, renames or narrows what the
previous release reads or writes; a removal waits for a later release, once no replica
reads the thing any more. adxflow never downgrades a database by itself.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from common.contracts.errors import AdxflowError

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

# Alembic is imported where it is used: workers without a database never load it.

log = structlog.get_logger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
#: The PostgreSQL advisory lock held while a database is migrated (any fixed number).
_LOCK = 0x616478666C6F77  # "adxflow"

#: ``auto``: a starting service migrates; ``check``: it refuses a schema that is not at head.
MigrateMode = Literal["auto", "check"]


class SchemaError(AdxflowError):
    """The database's schema is not one this code can run on; says what to do about it."""


@dataclass(frozen=True)
class SchemaState:
    """Where a database's schema is, against the revisions this code knows."""

    #: The database's revision; None when it has none (empty, or made before migrations).
    current: str | None
    head: str
    #: The revisions an upgrade applies, in order.
    pending: tuple[str, ...]
    #: Whether the database has tables but no revision: made before migrations (or not adxflow's).
    unversioned_tables: bool
    #: Whether the database's revision is one this code does not know: a newer release migrated it.
    newer: bool = False

    @property
    def at_head(self) -> bool:
        return not self.pending

    def describe(self) -> str:
        if self.newer:
            return f"at revision {self.current}, newer than this release's {self.head}"
        if self.current is not None:
            return f"at revision {self.current}"
        if self.unversioned_tables:
            return "from before schema migrations (tables without an alembic_version)"
        return "empty"


@dataclass(frozen=True)
class Migration:
    """What an upgrade did: from which revision (None: none) to which, through which."""

    before: str | None
    after: str
    applied: tuple[str, ...] = ()


@functools.cache
def _scripts() -> ScriptDirectory:
    # Read once per process: every store of every test asks.
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS))


def head() -> str:
    revision = _scripts().get_current_head()
    assert revision is not None, f"no revisions in {MIGRATIONS}"
    return revision


def _state(connection: sa.Connection) -> SchemaState:
    from alembic.runtime.migration import MigrationContext
    from alembic.util import CommandError

    current = MigrationContext.configure(connection).get_current_revision()
    scripts = _scripts()
    if current is not None:
        try:
            scripts.get_revision(current)
        except CommandError:
            return SchemaState(current, head(), (), unversioned_tables=False, newer=True)
    pending = tuple(reversed([script.revision for script in scripts.iterate_revisions(head(), current)]))
    tables = [name for name in sa.inspect(connection).get_table_names() if name != "alembic_version"]
    return SchemaState(current, head(), pending, unversioned_tables=current is None and bool(tables))


async def state(engine: AsyncEngine) -> SchemaState:
    """Where the database's schema is, against the revisions this code knows."""
    async with engine.connect() as conn:
        return await conn.run_sync(_state)


@asynccontextmanager
async def _locked(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection that alone may migrate the database, in a transaction committed at the end.

    PostgreSQL: a session-level advisory lock, held across the whole upgrade whatever its
    revisions do with transactions. SQLite: ``BEGIN IMMEDIATE`` takes the file's write lock
    (waiting the busy timeout for it), which another process migrating the same file waits for.
    """
    async with engine.connect() as conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            await conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": _LOCK})
            await conn.commit()
        try:
            async with conn.begin():
                if conn.dialect.name == "sqlite":
                    await conn.exec_driver_sql("BEGIN IMMEDIATE")
                yield conn
        finally:
            if postgres:
                try:
                    await conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK})
                    await conn.commit()
                except sa.exc.DBAPIError:
                    # The session is broken; discarding it releases the lock with it.
                    await conn.invalidate()


def _upgrade(connection: sa.Connection) -> Migration:
    from alembic import command
    from alembic.config import Config

    # Read again under the lock: a replica that held it before may have done everything,
    # or a newer release may have migrated meanwhile (then nothing is pending here).
    before = _state(connection)
    if before.pending:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return Migration(before.current, before.head, before.pending)


#: Alembic keeps the migration under way in module globals (``alembic.op``, ``alembic.context``):
#: one migration at a time in a process, whatever the databases (one lock per event loop).
_IN_PROCESS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _newer(found: SchemaState) -> Migration:
    log.warning(
        "the database's schema is newer than this release; running on it, since revisions only add",
        revision=found.current,
        release_head=found.head,
    )
    assert found.current is not None
    return Migration(found.current, found.current)


async def migrate(engine: AsyncEngine) -> Migration:
    """Upgrade the database to the newest revision; cheap when it is there already.

    A schema newer than this code is left as it is (the module's docstring says why).
    """
    found = await state(engine)
    if found.newer:
        return _newer(found)
    if found.at_head:
        return Migration(found.current, found.head)
    one_at_a_time = _IN_PROCESS.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with one_at_a_time, _locked(engine) as conn:
        migration = await conn.run_sync(_upgrade)
    if migration.applied:
        log.info(
            "schema migrated",
            from_revision=migration.before,
            to_revision=migration.after,
            applied=list(migration.applied),
        )
    return migration


async def ensure_schema(engine: AsyncEngine, mode: MigrateMode = "auto") -> None:
    """Make sure the database's schema is the one this code runs on: migrate it, or refuse it."""
    if mode == "auto":
        await migrate(engine)
        return
    found = await state(engine)
    if found.newer:
        _newer(found)
    elif not found.at_head:
        raise SchemaError(
            f"the database's schema is {found.describe()}; this release of adxflow needs revision "
            f"{found.head!r}. Run `adxflow migrate` (with ADXFLOW_MIGRATE=check, services do not "
            "migrate the database themselves)"
        )
