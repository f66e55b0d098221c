"""The run history in SQL: SQLite in embedded mode, PostgreSQL when deployed.

One code path (SQLAlchemy Core, async). What a status event changes is decided
by :mod:`services.history.transitions`; here are the tables (``schema``), the
writes that apply what it decides (``writes``), the reads (``queries``) and runs
as the API returns them (``views``).
"""

from services.history.store.queries import RunQueries
from services.history.store.schema import metadata
from services.history.store.writes import RunWrites


class HistoryStore(RunWrites, RunQueries):
    """Runs and their steps: merged from status events, read by the API and the pages."""

    metadata = metadata
