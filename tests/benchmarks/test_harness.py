"""The benchmark harness runs every benchmark in its quick form against the real servers and
writes a well-formed report; its figures are read, not judged, here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run import BENCHMARKS

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| (?P<name>[^|]+) \| (?P<runs>\d+) \| (?P<min>[^|]+) \| (?P<median>[^|]+) \| ")


@pytest.mark.rabbitmq
@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_the_quick_run_writes_every_section_with_figures(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", f"--output={output}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=290,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    report = output.read_text(encoding="utf-8")
    assert report.startswith("# Benchmarks\n")
    assert "(quick mode)" in report
    headings = re.findall(r"^## (.+)$", report, re.MULTILINE)
    assert headings == ["Targets", "Machine", *(title for _, title, _ in BENCHMARKS)]
    for label in ("CPU", "memory", "Python", "broker", "database", "packages"):
        assert re.search(rf"^\| {label} \| .+ \|$", report, re.MULTILINE), label
    assert "**Failed**" not in report
    for section in re.split(r"^## ", report, flags=re.MULTILINE)[3:]:
        rows = [match for line in section.splitlines() if (match := ROW.match(line))]
        assert rows, section.splitlines()[0]
        assert all(int(row["runs"]) >= 1 and row["median"].strip() != "n/a" for row in rows)
    targets = report.split("## Targets", 1)[1].split("## Machine", 1)[0]
    for target in (
        "throughput pipeline ÷ direct, concurrency 16",
        "firing lateness p99",
        "reader: peak RSS",
        "throughput scope ÷ separate, 20 rows, concurrency 20",
        "trigger peak RSS, 400 ÷ 40 rows",
        "PostgreSQL, steady (all still firing): time per instance, 200 ÷ 20 instances",
        "PostgreSQL, copy step: rows per second",
        "PostgreSQL, worker peak RSS ÷ the 64 MiB byte cap",
    ):
        assert target in targets
