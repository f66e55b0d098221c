"""What the query-worker's steps do in a test run (``RunContext.dry_run``): read, never write.

Queries run as in any run (they only read). A control command runs only if it
is a ``.show`` command; any other is recorded, not sent. A copy into a database
and an ingestion into Kusto read their source as for real and write nothing:
their output says how many rows they would write, where, and shows the first
rows. Neither touches its ledger (the copy ledger, the ingest-by tags). An
export writes its file into the run's own artifacts, as in any run: that
delivers nothing to anyone.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from common.contracts.dry_runs import NOT_RUN_COMMAND, SAMPLE_ROWS
from common.contracts.results import Column
from common.platform.sql.reads import Batch

_SHOW = re.compile(r"^\s*\.show\b", re.IGNORECASE)


def runs_in_test(command: str) -> bool:
    """Whether a test run sends the control command *command*: a ``.show`` command only reads."""
    return _SHOW.match(command) is not None


def command_not_run(text: str) -> dict[str, Any]:
    """The detail of a control command a test run did not send."""
    return {"dry_run": NOT_RUN_COMMAND, "text": text}


@dataclass
class Sample:
    """What a write would write: how many rows, their columns, the first of them."""

    rows: int = 0
    columns: list[Column] = field(default_factory=list)
    first: list[list[Any]] = field(default_factory=list)

    def detail(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "sample": {
                "columns": [f"{column.name}:{column.type}" for column in self.columns],
                "rows": [[_shown(value) for value in row] for row in self.first],
            },
        }


async def sampled(batches: AsyncIterator[Batch]) -> Sample:
    """Every row of *batches* counted, the first :data:`SAMPLE_ROWS` kept (the caller closes them)."""
    sample = Sample()
    async for columns, rows in batches:
        sample.columns = sample.columns or list(columns)
        if len(sample.first) < SAMPLE_ROWS:
            sample.first.extend(rows[: SAMPLE_ROWS - len(sample.first)])
        sample.rows += len(rows)
    return sample


def _shown(value: Any) -> Any:
    """A sample's value as JSON holds it (dates and decimals as text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
