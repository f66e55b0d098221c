"""Rendering: ``benchmarks/render.py``'s figures, run in a process of its own."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from benchmarks.figures import Section, Target

SCRIPT = Path(__file__).with_name("render.py")
#: The target of one figure, in seconds.
TARGETS = {"time chart, 10,000 points → PNG": 0.3}


async def run(section: Section, workdir: Path, *, quick: bool) -> None:
    repeat, rows = (1, 3000) if quick else (3, 500_000)
    output = workdir / "render.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        f"--repeat={repeat}",
        f"--rows={rows}",
        f"--json={output}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"render.py failed: {err.decode(errors='replace')[-2000:]}")
    figures = json.loads(output.read_text(encoding="utf-8"))
    for name, seconds in figures["seconds"].items():
        target = TARGETS.get(name)
        section.add(name, "ms", [s * 1000 for s in seconds], Target(target * 1000) if target else None)
    sizes = figures["bytes"]
    for what in ("HTML table", "CSV"):
        peak = sizes[f"{what} peak"] / 2**20
        section.add(f"peak memory allocated for the {what} (tracemalloc)", "MiB", [peak])
    section.notes.append(
        f"`benchmarks/render.py --repeat {repeat} --rows {rows}`: each chart drawn once to warm up, then "
        f"{repeat} times; the CSV of {figures['rows']:,} rows ({sizes['CSV size'] / 2**20:.1f} MiB) "
        f"{max(1, repeat // 2)} time(s)."
    )


METHOD = """
`benchmarks/render.py`, run as its own process: a seeded random walk of 10,000 and 100,000 points
drawn as a time chart (downsampled to the chart's width with MinMax-LTTB), a pie of 200 Zipf-sized
categories (the largest 10 and "Other"), a bar chart of the sample's 30 commonest event types, each
rendered by `render_chart` to SVG and PNG at 800 × 450; then, on a result of the sample table's rows
(ten columns, about 128 bytes of JSON a row), the email's HTML table of the first 1,000 rows and the
CSV of every row streamed to a folder blob store.

Target: a 10,000-point time chart in ≤ 0.3 s.
"""
