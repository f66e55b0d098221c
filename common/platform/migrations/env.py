"""Alembic's environment for adxflow's revisions.

adxflow runs it from :mod:`common.platform.schema`, on a connection that module has already
locked and begun a transaction on (``config.attributes["connection"]``). Someone writing a
revision runs it with Alembic's own command against a database of their choosing::

    alembic -c common/platform/migrations/alembic.ini -x url=sqlite+aiosqlite:///dev.db upgrade head
    alembic -c common/platform/migrations/alembic.ini -x url=sqlite+aiosqlite:///dev.db \
        revision --autogenerate -m "what it adds"
"""

from __future__ import annotations

import asyncio
import importlib
import os

import sqlalchemy as sa
from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

config = context.config


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=config.attributes.get("target_metadata"),
        # SQLite alters little in place: autogenerate writes batch operations, which copy the table.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _target_metadata() -> sa.MetaData | None:
    # Only by hand: every service's tables, which common itself must never import.
    path = config.get_main_option("target_metadata")
    if not path:
        return None
    module, _, name = path.partition(":")
    metadata: sa.MetaData = getattr(importlib.import_module(module), name)
    return metadata


async def _by_hand() -> None:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("ADXFLOW_DATABASE_URL")
    if not url:
        raise SystemExit("name the database: -x url=... or ADXFLOW_DATABASE_URL")
    config.attributes.setdefault("target_metadata", _target_metadata())
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if "connection" in config.attributes:
    _run(config.attributes["connection"])
else:
    asyncio.run(_by_hand())
