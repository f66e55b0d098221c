"""Rendering speed and memory: charts to PNG, and the table and CSV of a big result.

Run: ``.venv/bin/python benchmarks/render.py [--repeat N] [--rows N] [--json PATH]``.
Prints each figure as min / median / max over the repeats, and the target it
is held against; with ``--json``, also writes every timing (seconds) and peak
(bytes) to PATH. Everything runs in this process on the sample data's
generator (a seeded StormEvents-like table), so the numbers are comparable
between machines only as far as the machines are.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import random
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.contracts.results import Column, ResultSet
from common.platform.blobs.folder import FolderBlobStore
from services.embedded.sample_data import STORM_EVENTS_COLUMNS, storm_events_rows
from services.render.chart import ChartOptions, render_chart
from services.render.csvfile import store_csv
from services.render.table import render_table

#: Columns of the big result: a report's mix of time, text and numbers, about 128 bytes of JSON a
#: row, so 500,000 rows come near the seed's 64 MB result limit.
BIG_COLUMNS = (
    "StartTime", "EndTime", "State", "EventType", "DamageProperty", "BeginLat", "BeginLon",
    "BeginLocation", "EndLocation", "Source",
)  # fmt: skip


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def time_series(points: int, seed: int = 7) -> ResultSet:
    """A seeded random walk, one point a minute: a long time series with local structure."""
    rng = random.Random(seed)
    start = dt.datetime(2007, 1, 1, tzinfo=dt.UTC)
    value = 1000.0
    rows = []
    for minute in range(points):
        value = max(0.0, value + rng.gauss(0, 25))
        moment = start + dt.timedelta(minutes=minute)
        rows.append([moment.strftime("%Y-%m-%dT%H:%M:%SZ"), round(value, 2)])
    return ResultSet(
        columns=[Column(name="Timestamp", type="datetime"), Column(name="Value", type="real")], rows=rows
    )


def categories(count: int, seed: int = 7) -> ResultSet:
    """*count* categories with Zipf-like sizes, as a pie of a long tail gets them."""
    rng = random.Random(seed)
    rows = [
        [f"Category {index:03d}", int(100_000 / (index + 1) * rng.uniform(0.8, 1.2))]
        for index in range(count)
    ]
    return ResultSet(
        columns=[Column(name="Category", type="string"), Column(name="Count", type="long")], rows=rows
    )


def sample(rows: int, names: tuple[str, ...]) -> ResultSet:
    """The first *rows* rows of the sample table, projected on *names*."""
    indexes = [index for index, (name, _) in enumerate(STORM_EVENTS_COLUMNS) if name in names]
    columns = [Column(name=STORM_EVENTS_COLUMNS[i][0], type=STORM_EVENTS_COLUMNS[i][1]) for i in indexes]
    data = [[_wire(row[i]) for i in indexes] for row in storm_events_rows(rows)]
    return ResultSet(columns=columns, rows=data)


def _wire(value: Any) -> Any:
    """A value as the query-worker stores it: datetimes as Kusto writes them."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value


def event_types(top: int) -> ResultSet:
    counts: dict[str, int] = {}
    index = [name for name, _ in STORM_EVENTS_COLUMNS].index("EventType")
    for row in storm_events_rows():
        counts[row[index]] = counts.get(row[index], 0) + 1
    ranked = sorted(counts.items(), key=lambda item: item[1], reverse=True)[:top]
    return ResultSet(
        columns=[Column(name="EventType", type="string"), Column(name="Events", type="long")],
        rows=[list(item) for item in ranked],
    )


def timed(action: Callable[[], Any], repeat: int) -> list[float]:
    action()  # warm: imports, font caches
    figures = []
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        action()
        figures.append(time.perf_counter() - started)
    return figures


def peak_memory(action: Callable[[], Any]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def line(name: str, figures: list[float], target: float | None = None) -> str:
    low, mid, high = min(figures), statistics.median(figures), max(figures)
    text = f"{name:<44} {low * 1000:8.1f} {mid * 1000:8.1f} {high * 1000:8.1f} ms"
    if target is not None:
        verdict = "meets" if mid <= target else "MISSES"
        text += f"   target ≤ {target * 1000:.0f} ms: {verdict} ({mid / target:.2f}× the target)"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rows", type=int, default=500_000, help="rows of the big result")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    #: Every timing in seconds by figure name, and the peaks and sizes in bytes.
    figures: dict[str, Any] = {"seconds": {}, "bytes": {}}

    print(f"{'':<44} {'min':>8} {'median':>8} {'max':>8}")
    charts = [
        ("time chart, 10,000 points → PNG", time_series(10_000), "timechart", 0.3),
        ("time chart, 100,000 points → PNG", time_series(100_000), "timechart", None),
        ("pie, 200 categories → PNG", categories(200), "piechart", None),
        ("bar chart, 30 bars → PNG", event_types(30), "barchart", None),
    ]
    options = ChartOptions()
    for name, result, kind, target in charts:
        figures["seconds"][name] = timed(lambda r=result, k=kind: render_chart(r, k, options), args.repeat)
        print(line(name, figures["seconds"][name], target), flush=True)

    started = time.perf_counter()
    big = sample(args.rows, BIG_COLUMNS)
    wire_bytes = sum(len(_JSON(row)) for row in big.rows)
    print(
        f"(built a {big.row_count:,}-row result of {len(big.columns)} columns, {wire_bytes / 2**20:.0f} MiB"
        f" as JSON, in {time.perf_counter() - started:.1f} s)"
    )
    table_name = f"HTML table (1,000 of {big.row_count:,} rows)"
    figures["seconds"][table_name] = timed(lambda: render_table(big, max_rows=1000), args.repeat)
    print(line(table_name, figures["seconds"][table_name]))
    with tempfile.TemporaryDirectory() as folder:
        store = FolderBlobStore(Path(folder))

        def write_csv() -> Any:
            return asyncio.run(store_csv(big, store, "bench/result.csv"))

        csv_name = f"CSV of {big.row_count:,} rows → blob store"
        figures["seconds"][csv_name] = timed(write_csv, max(1, args.repeat // 2))
        print(line(csv_name, figures["seconds"][csv_name]))
        size = write_csv().size
        table_peak = peak_memory(lambda: render_table(big, max_rows=1000))
        csv_peak = peak_memory(write_csv)
    print(f"CSV size {size / 2**20:.1f} MiB; peak memory allocated while rendering (tracemalloc):")
    print(
        f"  HTML table {table_peak / 2**20:.1f} MiB; CSV {csv_peak / 2**20:.1f} MiB "
        f"({csv_peak / size:.3f}× the file it wrote)"
    )
    if args.json:
        figures["bytes"] = {"CSV size": size, "HTML table peak": table_peak, "CSV peak": csv_peak}
        figures["rows"] = big.row_count
        args.json.write_text(json.dumps(figures), encoding="utf-8")


if __name__ == "__main__":
    main()
