"""The rendering benchmark runs end to end in its quick form; its figures are read, not judged, here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "render.py"


def test_the_render_benchmark_prints_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--repeat", "1", "--rows", "3000"],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    figures = re.findall(r"^(.+?)\s+(\d+\.\d) +(\d+\.\d) +(\d+\.\d) ms", done.stdout, re.MULTILINE)
    names = [name.strip() for name, *_ in figures]
    assert names == [
        "time chart, 10,000 points → PNG",
        "time chart, 100,000 points → PNG",
        "pie, 200 categories → PNG",
        "bar chart, 30 bars → PNG",
        "HTML table (1,000 of 3,000 rows)",
        "CSV of 3,000 rows → blob store",
    ]
    assert "target ≤ 300 ms" in done.stdout
    assert re.search(r"HTML table [\d.]+ MiB; CSV [\d.]+ MiB", done.stdout)
