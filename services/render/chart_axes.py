"""Axis labels readable at email size: at most a dozen per axis, on round values.

Time ticks fall on round local times in the report's time zone (local
midnight for day steps, the first of the month for month steps, correct
across daylight-saving changes) and are labelled for the span: hours as
HH:MM, days as dates, months as YYYY-MM.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

from services.render.table import format_number

MAX_LABELS = 12

_DAY = 86400
_STEPS_IN_SECONDS = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800,
    3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600, _DAY, 2 * _DAY, 7 * _DAY, 14 * _DAY,
)  # fmt: skip
_STEPS_IN_MONTHS = (1, 2, 3, 6, 12, 24, 60, 120, 240, 600, 1200)
_MONDAY = dt.date(1970, 1, 5).toordinal()  # weekly ticks fall on Mondays
_NICE_STEPS = (1.0, 2.0, 2.5, 5.0)
#: About how wide a character of an 11-pixel label is, in pixels.
_CHARACTER_WIDTH = 6.5


def time_ticks(
    start: float, end: float, zone: dt.tzinfo = dt.UTC, max_ticks: int = MAX_LABELS
) -> list[tuple[float, str]]:
    """Round tick positions (Unix seconds) between start and end, labelled in `zone` for the span."""
    span = end - start
    if span <= 0:
        return [(start, _local(start, zone).strftime("%Y-%m-%d %H:%M"))]
    for step in _STEPS_IN_SECONDS:
        if span / step > max_ticks - 1:
            continue
        positions = (
            _clock_ticks(start, end, step, zone) if step < _DAY else _day_ticks(start, end, step, zone)
        )
        if len(positions) <= max_ticks:
            pattern = _tick_format(step, start, end, zone)
            return [(position, _local(position, zone).strftime(pattern)) for position in positions]
    months_spanned = span / (30.44 * _DAY)
    step_months = next((step for step in _STEPS_IN_MONTHS if months_spanned / step <= max_ticks - 1), 1200)
    first = _local(start, zone)
    month = first.year * 12 + first.month - 1
    if (first.day, first.time()) != (1, dt.time()):
        month += 1
    month = -(-month // step_months) * step_months
    ticks = []
    while month // 12 <= dt.MAXYEAR:
        position = dt.datetime(month // 12, month % 12 + 1, 1, tzinfo=zone).timestamp()
        if position > end:
            break
        ticks.append((position, _local(position, zone).strftime("%Y-%m" if step_months < 12 else "%Y")))
        month += step_months
    return ticks


def _clock_ticks(start: float, end: float, step: int, zone: dt.tzinfo) -> list[float]:
    """Times of day that are multiples of `step` on the local clock (every step divides a day)."""
    wall = _local(start, zone).replace(tzinfo=None)
    midnight = wall.replace(hour=0, minute=0, second=0, microsecond=0)
    elapsed = (wall - midnight).total_seconds()
    tick = midnight + dt.timedelta(seconds=math.ceil(elapsed / step) * step)
    positions: set[float] = set()
    # A wall time skipped by a daylight-saving change maps onto a real one: the set drops repeats.
    while (position := tick.replace(tzinfo=zone).timestamp()) <= end:
        if position >= start:
            positions.add(position)
        tick += dt.timedelta(seconds=step)
    return sorted(positions)


def _day_ticks(start: float, end: float, step: int, zone: dt.tzinfo) -> list[float]:
    """Local midnights: every day, every other day, or Mondays (every week or every other one)."""
    days = step // _DAY
    origin = _MONDAY if days % 7 == 0 else 0
    day = _local(start, zone).date()
    last = _local(end, zone).date()
    positions = []
    while day <= last:
        if (day.toordinal() - origin) % days == 0:
            position = dt.datetime.combine(day, dt.time(), tzinfo=zone).timestamp()
            if start <= position <= end:
                positions.append(position)
        day += dt.timedelta(days=1)
    return positions


def _tick_format(step: int, start: float, end: float, zone: dt.tzinfo) -> str:
    if step < 60:
        return "%H:%M:%S"
    if step < _DAY:
        return "%H:%M" if _local(start, zone).date() == _local(end, zone).date() else "%m-%d %H:%M"
    return "%Y-%m-%d"


def _local(timestamp: float, zone: dt.tzinfo) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, zone)


def number_ticks(low: float, high: float, max_ticks: int = MAX_LABELS) -> list[float]:
    """Round values, 1, 2, 2.5 or 5 times a power of ten apart, from `low` or below to `high` or above."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high < low:
        low, high = high, low
    if high == low:
        padding = abs(low) * 0.1 or 1.0
        low, high = low - padding, high + padding
    rough = (high - low) / max(1, max_ticks - 1)
    power = 10.0 ** math.floor(math.log10(rough))
    for multiple in (*_NICE_STEPS, *(step * 10 for step in _NICE_STEPS)):
        step = multiple * power
        first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
        if last - first + 1 <= max_ticks:
            return [float(f"{index * step:.12g}") for index in range(first, last + 1)]
    return [low, high]


def value_labels(ticks: Sequence[float], *, percent: bool = False) -> list[dict[str, object]]:
    """pygal labels for value ticks, with thousands separators (and % for shares)."""
    suffix = "%" if percent else ""
    return [{"value": tick, "label": f"{format_number(tick)}{suffix}"} for tick in ticks]


def fitting_labels(length: int, space: float, per_label: float) -> int:
    """How many labels fit in `space` pixels at `per_label` each, between 2 and MAX_LABELS."""
    return max(2, min(MAX_LABELS, int(space // per_label), length))


def thinned(labels: Sequence[str], most: int) -> list[str]:
    """Every n-th label kept, the others blank, so that at most `most` are written."""
    every = math.ceil(len(labels) / most) if labels else 1
    return [label if index % every == 0 else "" for index, label in enumerate(labels)]


def label_rotation(labels: Sequence[str], space: float) -> int:
    """Tilt labels spread evenly over `space` pixels (blanks included) when, flat, they would touch."""
    written = [index for index, label in enumerate(labels) if label]
    if not written:
        return 0
    every = written[1] - written[0] if len(written) > 1 else len(labels)
    spacing = space / len(labels) * every
    widest = max(len(labels[index]) for index in written) * _CHARACTER_WIDTH + 8
    return 30 if widest > spacing else 0


def zone_name(zone: dt.tzinfo) -> str:
    """The zone as a reader knows it: "UTC", "Europe/Berlin", "UTC+01:00"."""
    return str(getattr(zone, "key", None) or dt.datetime.now(zone).tzname() or zone)
