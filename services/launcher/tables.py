"""Every service's tables as one MetaData: what the schema's revisions must build, exactly.

A test compares a migrated database with it (an autogenerate diff that is not empty fails CI),
and Alembic's ``revision --autogenerate`` starts from it (``migrations/alembic.ini``).
"""

from __future__ import annotations

import sqlalchemy as sa

from services.history.dead_letters import metadata as dead_letters
from services.history.store.schema import metadata as history
from services.notifier.ledger import metadata as notifier
from services.trigger.alert_store import metadata as alerts
from services.trigger.scope_store import metadata as scopes
from services.trigger.silences import metadata as silences
from services.trigger.store import metadata as trigger


def _combined(*parts: sa.MetaData) -> sa.MetaData:
    combined = sa.MetaData()
    for part in parts:
        for table in part.tables.values():
            table.to_metadata(combined)
    return combined


metadata = _combined(history, dead_letters, trigger, scopes, alerts, silences, notifier)
