"""The alerts benchmark lives its alerts through every scenario at a tiny size on SQLite; its
figures are read, not judged, here."""

from __future__ import annotations

from pathlib import Path

from benchmarks.alerts import METHOD, Bench, TimedStore, measure, report, runtime_in
from benchmarks.figures import Section


async def test_tiny_alerts_tell_each_scenario_and_give_every_figure(tmp_path: Path) -> None:
    store = TimedStore(f"sqlite+aiosqlite:///{tmp_path / 'alerts.db'}")
    try:
        await store.ensure_schema()
        async with runtime_in(tmp_path) as runtime:
            # Each evaluation checks what it told: all new, all still firing, 1% churned.
            lives = await measure(Bench(store, runtime), (10, 100), rounds=1, minutes=1)
    finally:
        await store.close()
    section = Section("alerts", METHOD)
    report(section, "SQLite", lives, (10, 100))

    figures = {figure.name: figure for figure in section.figures}
    first = "SQLite, first evaluation (all new)"
    assert figures[f"{first}, 100 instances: SQL statements"].target is not None
    assert figures[f"{first}, 100 instances: SQL statements"].median < 100
    for scenario in (first, "SQLite, steady (all still firing)", "SQLite, churn (1% resolved, 1% new)"):
        assert figures[f"{scenario}: time per instance, 100 ÷ 10 instances"].median > 0
        assert figures[f"{scenario}, 100 instances: peak allocated (tracemalloc)"].median > 0
    assert len(section.notes) == 3
    assert all("blob read and parse" in note for note in section.notes)
