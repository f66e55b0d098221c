"""The copies benchmark runs the query worker's two steps and the row-at-a-time loop at a tiny size
into PostgreSQL and MariaDB; its figures are read, not judged, here."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.copies import METHOD, run
from benchmarks.figures import Section


@pytest.mark.postgres
@pytest.mark.mariadb
@pytest.mark.timeout(120)
async def test_tiny_copies_give_every_figure_for_both_databases(tmp_path: Path) -> None:
    section = Section("copies", METHOD)

    await run(section, tmp_path, quick=True)

    figures = {figure.name: figure for figure in section.figures}
    for database in ("PostgreSQL", "MariaDB"):
        for figure in (
            "copy step: rows per second",
            "end to end (query and copy steps): rows per second",
            "copy step ÷ row-at-a-time loop: rows per second",
            "worker peak RSS ÷ the 64 MiB byte cap",
        ):
            assert figures[f"{database}, {figure}"].median > 0
    assert figures["PostgreSQL, copy step: rows per second"].target is not None
    assert figures["MariaDB, copy step: rows per second"].target is None
    assert [note.split(":", 1)[0] for note in section.notes] == ["PostgreSQL", "MariaDB"]
