"""A report of some benchmarks merges into one written before: the other sections stay as they were."""

from __future__ import annotations

import datetime as dt

import pytest

from benchmarks.figures import Report, Section, Target, merge

TITLES = ["1. First", "2. Second", "3. Third"]


def _report(mode: str, started: dt.datetime, machine: list[tuple[str, str]], **ratios: float) -> Report:
    report = Report(command="python -m benchmarks.run", mode=mode, started=started, machine=machine)
    for title, value in ratios.items():
        section = Section(TITLES[int(title[1:]) - 1], f"How {title} is measured.", seconds=5)
        section.add(f"ratio of {title}", "×", [value], Target(0.9, at_least=True))
        section.notes.append(f"{title} ran once.")
        report.sections.append(section)
    return report


EARLIER = _report(
    "full",
    dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC),
    [("CPU", "2 cores"), ("load before the run", "1%")],
    s1=1.0,
    s2=0.5,
    s3=0.95,
).markdown()


def test_the_refreshed_section_replaces_its_own_and_the_others_stay() -> None:
    later = _report(
        "full",
        dt.datetime(2026, 2, 3, 4, 5, tzinfo=dt.UTC),
        [("CPU", "2 cores"), ("load before the run", "40%")],
        s2=0.97,
    )
    later.command += " --only second"

    merged = merge(EARLIER, later, TITLES)

    assert merged.count("## 2. Second") == 1
    assert "| ratio of s2 | 1 | 0.970 |" in merged
    assert "| ratio of s2 | 1 | 0.500 |" not in merged
    assert (
        merged.split("## 1. First", 1)[1].split("## 2.", 1)[0]
        == EARLIER.split("## 1. First", 1)[1].split("## 2.", 1)[0]
    )
    assert merged.split("## 3. Third", 1)[1] == EARLIER.split("## 3. Third", 1)[1]
    targets = merged.split("## Targets", 1)[1].split("## Machine", 1)[0]
    assert [
        line.split(" | ")[1] for line in targets.splitlines() if line.startswith("| ") and "ratio" in line
    ] == [
        "ratio of s1",
        "ratio of s2",
        "ratio of s3",
    ]
    assert "| 2. Second | ratio of s2 | ≥ 0.900 × | met |" in targets
    assert "| load before the run | 1% |" in merged
    assert (
        "- Measured by `python -m benchmarks.run --only second` on 2026-02-03 04:05 UTC; where the machine "
        "then differed from the table under Machine: load before the run: 40%." in merged
    )
    assert (
        "Refreshed since by `python -m benchmarks.run --only second` on 2026-02-03 04:05 UTC: 2. Second."
        in merged
    )
    assert merge(merged, later, TITLES) == merged


def test_a_report_of_another_mode_is_not_merged_into() -> None:
    quick = _report("quick", dt.datetime(2026, 2, 3, 4, 5, tzinfo=dt.UTC), [], s2=0.97)

    with pytest.raises(ValueError, match="not written in quick mode"):
        merge(EARLIER, quick, TITLES)
