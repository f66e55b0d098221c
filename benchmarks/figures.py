"""Figures, the targets they are held against, and the Markdown report that shows them.

A figure is one quantity measured once per repeated run (its values); the report
shows min / median / max of those values and judges a target on the median.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


def percentile(values: Sequence[float], q: float) -> float:
    """The *q*-th percentile (0-100) of *values*, interpolated linearly between ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def number(value: float) -> str:
    """A figure as a reader wants it: about three significant digits, thousands separated."""
    if math.isnan(value):
        return "n/a"
    size = abs(value)
    if size >= 100 or (size >= 1 and float(value).is_integer()):
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


@dataclass(frozen=True)
class Target:
    """A bound the median must stay within: at most *bound* (or, with ``at_least``, at least)."""

    bound: float
    at_least: bool = False

    def text(self, unit: str) -> str:
        return f"{'≥' if self.at_least else '≤'} {number(self.bound)} {unit}".rstrip()

    def met(self, value: float) -> bool:
        return value >= self.bound if self.at_least else value <= self.bound

    def verdict(self, value: float, unit: str) -> str:
        if self.met(value):
            return "met"
        gap = abs(value - self.bound)
        return f"**missed** by {number(gap)} {unit} ({value / self.bound:.2f}× the target)".replace("  ", " ")


@dataclass
class Figure:
    name: str
    unit: str
    #: One value per repeated run.
    values: list[float]
    target: Target | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else math.nan

    def row(self) -> list[str]:
        if not self.values:
            cells = ["0", "n/a", "n/a", "n/a"]
        else:
            cells = [str(len(self.values)), number(min(self.values)), number(self.median)]
            cells.append(number(max(self.values)))
        target = self.target.text(self.unit) if self.target else ""
        verdict = self.target.verdict(self.median, self.unit) if self.target and self.values else ""
        return [self.name, *cells, self.unit, target, verdict]


@dataclass
class Section:
    title: str
    #: How the figures were measured, as Markdown paragraphs.
    method: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    #: Why a target of this section is missed, shown only when one is.
    if_missed: str = ""

    @property
    def missed(self) -> bool:
        return any(figure.row()[-1].startswith("**missed**") for figure in self.figures if figure.target)

    def add(self, name: str, unit: str, values: list[float], target: Target | None = None) -> Figure:
        figure = Figure(name, unit, list(values), target)
        self.figures.append(figure)
        return figure


_HEADER = ["figure", "runs", "min", "median", "max", "unit", "target", "verdict"]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


@dataclass
class Report:
    command: str
    mode: str
    started: dt.datetime
    machine: list[tuple[str, str]] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[Section]:
        return [section for section in self.sections if section.error]

    def markdown(self) -> str:
        lines = [
            "# Benchmarks",
            "",
            f"Written by `{self.command}` ({self.mode} mode) on {self.started:%Y-%m-%d %H:%M} UTC, "
            f"in {_duration(self.seconds)}. Run the command again to refresh it; do not edit by hand.",
            "",
            "Every figure is measured once per repeated run; the tables show min, median and max over "
            "the runs, and targets are judged on the median. A comparison (a ratio, a difference) is "
            "computed within each run from figures measured in that same run.",
            "",
            "## Targets",
            "",
        ]
        judged = [
            [section.title, *figure.row()[:1], figure.target.text(figure.unit), figure.row()[-1]]
            for section in self.sections
            for figure in section.figures
            if figure.target
        ]
        lines += _table(["benchmark", "figure", "target", "verdict (median)"], judged)
        lines += ["", "## Machine", ""]
        lines += _table(["", ""], [[key, value] for key, value in self.machine])
        for section in self.sections:
            lines += ["", f"## {section.title}", "", section.method.strip().replace("``", "`"), ""]
            if section.error:
                lines += [f"**Failed**: {section.error}", ""]
            if section.figures:
                lines += _table(_HEADER, [figure.row() for figure in section.figures])
                lines.append("")
            lines += [f"- {note}" for note in section.notes]
            lines += [f"- This benchmark took {_duration(section.seconds)}."]
            if section.missed and section.if_missed:
                lines += ["", "**Where a target is missed, and why.** " + section.if_missed.strip()]
        return "\n".join(lines) + "\n"


_REFRESHED = " Refreshed since by "


def _blocks(text: str) -> dict[str, list[str]]:
    """The lines under each ``## `` heading of a report, by heading (its opening under ``""``),
    without the blank lines around them."""
    blocks: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.split("\n"):
        if line.startswith("## "):
            current = line[3:]
            blocks[current] = []
        else:
            blocks[current].append(line)
    return {heading: "\n".join(lines).strip("\n").split("\n") for heading, lines in blocks.items()}


def _rows(lines: list[str]) -> list[list[str]]:
    """The cells of a block's table rows, without its header and separator rows."""
    table = [line for line in lines if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in table[1:]]


def merge(previous: str, report: Report, titles: Sequence[str]) -> str:
    """*report*'s sections written into *previous*, a report written before in the same mode.

    The other sections and their rows of the targets table stay as they were, as does the
    machine table, which describes the earlier run: each refreshed section says when and how it
    was measured, and where the machine then differed from that table. *titles* are every
    benchmark's, in the order they are reported.
    """
    if f"({report.mode} mode)" not in previous.split("\n## ", 1)[0]:
        raise ValueError(f"the earlier report was not written in {report.mode} mode")
    old, new = _blocks(previous), _blocks(report.markdown())
    refreshed = [section.title for section in report.sections]
    when = f"`{report.command}` on {report.started:%Y-%m-%d %H:%M} UTC"
    machine = {row[0]: row[1] for row in _rows(old.get("Machine", [])) if len(row) == 2}
    differs = "; ".join(f"{key}: {value}" for key, value in report.machine if machine.get(key) != value)
    note = f"- Measured by {when}; where the machine then differed from the table under Machine: {differs}."
    header = [
        line.split(_REFRESHED, 1)[0] + f"{_REFRESHED}{when}: {', '.join(refreshed)}."
        if line.startswith("Written by ")
        else line
        for line in old[""]
    ]
    judged = {title: [row for row in _rows(old.get("Targets", [])) if row[0] == title] for title in titles}
    judged.update({title: [row for row in _rows(new["Targets"]) if row[0] == title] for title in refreshed})
    targets = _table(
        ["benchmark", "figure", "target", "verdict (median)"], [r for t in titles for r in judged[t]]
    )
    blocks = [("Targets", targets), ("Machine", old.get("Machine", []))]
    for title in titles:
        if title in refreshed:
            block = new[title]
            at = next(i for i, line in enumerate(block) if line.startswith("- This benchmark took "))
            blocks.append((title, [*block[: at + 1], note, *block[at + 1 :]]))
        elif title in old:
            blocks.append((title, old[title]))
    lines = header
    for heading, block in blocks:
        lines += ["", f"## {heading}", "", *block]
    return "\n".join(lines) + "\n"
