"""An alert on a Kusto step: when its result is worth telling, and how often.

``alert:`` on a query (or command) step makes every run of the flow an
evaluation of it. The deliveries after the step (emails, webhooks) go out only
when the alert has something new to tell: it started firing, it resolved, it
is still firing ``repeat_every`` later, or the query failed (``error``) or
found nothing where rows were expected (``no data``). Between those, runs
record the state and deliver nothing.

By default the alert holds when the query returned rows; ``condition`` is any
template condition instead (over ``steps``, as ``when`` is). With
``key_columns`` each row is an instance of its own (one incident per
``EventId``), which fires and resolves on its own; ``condition`` is then asked
of each row (``row``).

``mute_windows`` names windows from the operator's configuration
(:mod:`common.contracts.mute_windows`) during which evaluations go on and deliveries are
held; silences (``/v1/silences``) withhold what an alert tells of a flow or of one instance.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal

from pydantic import Field, field_validator

from common.contracts.documents import Document
from common.contracts.parameters import Identifier

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_SIZES = (86_400, 3_600, 60, 1)
#: The longest wait an alert can be told (a year).
LONGEST = dt.timedelta(days=366)


def parse_duration(text: str) -> dt.timedelta:
    """``"30s"``, ``"15m"``, ``"4h"``, ``"1d"``, ``"1h30m"``: units in that order, each at most once."""
    compact = text.strip().lower()
    match = _DURATION.fullmatch(compact)
    if not compact or match is None:
        raise ValueError(f"{text!r} is not a duration; write a number and a unit (30s, 15m, 4h, 1d, 1h30m)")
    seconds = sum(int(count or 0) * size for count, size in zip(match.groups(), _SIZES, strict=True))
    if seconds == 0:
        raise ValueError(f"{text!r} is zero; a duration is at least 1 second")
    if seconds > LONGEST.total_seconds():
        raise ValueError(f"{text!r} is longer than a year")
    return dt.timedelta(seconds=seconds)


Duration = Annotated[str, Field(max_length=32)]


class AlertNotify(Document):
    """Which changes are delivered; the others are recorded only."""

    firing: bool = True
    resolved: bool = True


class Alert(Document):
    condition: Annotated[str | None, Field(max_length=4096)] = None
    #: Columns whose values make each row an instance of its own.
    key_columns: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=256)]], Field(max_length=10)
    ] = []
    #: How long the condition must hold before the alert fires: a number of evaluations in a row
    #: (``3``), or a duration (``10m``) from the first holding evaluation.
    pending_for: int | Duration | None = None
    #: How long a firing instance keeps firing after its condition stopped holding.
    keep_firing_for: Duration | None = None
    #: While firing (or in error), tell it again this often.
    repeat_every: Duration | None = None
    #: No rows is ``no data`` (not "the condition does not hold").
    expect_rows: bool = False
    #: What a failed query does: the ``error`` state (told once), as if it held, as if not, or nothing.
    on_error: Literal["error", "firing", "ok", "keep"] = "error"
    #: What no data does (with ``expect_rows``): the ``no_data`` state, as if it held, as if not, or nothing.
    on_no_data: Literal["no_data", "firing", "ok", "keep"] = "no_data"
    notify: AlertNotify = AlertNotify()
    #: Mute windows (by name, as the operator configured them) in which deliveries are held.
    mute_windows: Annotated[list[Identifier], Field(max_length=10)] = []

    @field_validator("pending_for")
    @classmethod
    def _pending(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and not 1 <= value <= 1000:
            raise ValueError("pending_for as a number of evaluations is 1 to 1000")
        if isinstance(value, str):
            parse_duration(value)
        return value

    @field_validator("keep_firing_for", "repeat_every")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("key_columns", "mute_windows")
    @classmethod
    def _distinct(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError("names one twice")
        return values

    def templates(self) -> dict[str, str]:
        return {"alert.condition": self.condition} if self.condition else {}
