"""The fault report's script runs two of its scenarios on the real servers and processes and
writes a report that says what every accepted job became."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.rabbitmq
@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_two_worker_faults_are_reported_with_nothing_lost_duplicated_or_stuck(tmp_path: Path) -> None:
    output = tmp_path / "reliability.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.reliability",
            "--jobs=10",
            "--only",
            "kill-notifier",
            "sigterm-query-worker",
            f"--output={output}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    report = output.read_text(encoding="utf-8")
    rows = re.findall(r"^\| (kill-notifier|sigterm-query-worker) \| [^|]+ \| (.+) \|$", report, re.MULTILINE)
    assert [name for name, _ in rows] == ["kill-notifier", "sigterm-query-worker"]
    for _, cells in rows:
        submitted, accepted, statuses, emails, _, duplicates, lost, stuck, _ = (
            cell.strip() for cell in cells.split("|")
        )
        assert (submitted, accepted, statuses, emails) == ("10", "10", "10 succeeded", "10")
        assert (duplicates, lost, stuck) == ("0", "0", "0")
    assert re.search(
        r"Every scenario: 0 lost, 0 duplicated, 0 stuck \(\d+ identical resends? in all\)\.", report
    )
    assert re.search(r"query_worker exited 0 [\d.]+ s after SIGTERM", report)
