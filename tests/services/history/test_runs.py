"""The filters the API and the pages read runs with: each bad one is refused by name."""

from __future__ import annotations

import datetime as dt

import pytest

from common.contracts.messages import RunStatus, TriggerKind
from common.platform.routes import InvalidParameter
from services.history.runs import RunFilters


def test_a_query_string_becomes_filters_and_the_path_names_the_flow() -> None:
    filters = RunFilters.parse(
        {
            "status": "failed",
            "trigger": "schedule",
            "since": "2026-03-01T06:00:00",
            "order": "asc",
            "flow": "a",
        },
        flow="b",
    )

    assert filters == RunFilters(
        status=RunStatus.FAILED,
        flow="b",
        trigger=TriggerKind.SCHEDULE,
        since=dt.datetime(2026, 3, 1, 6, tzinfo=dt.UTC),
        order="asc",
    )


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ({"status": "lost"}, "status"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"order": "up"}, "order"),
        ({"cursor": "@@"}, "cursor"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
        ({"trigger": "psychic"}, "trigger"),
    ],
)
def test_a_bad_filter_is_refused_naming_it(query: dict[str, str], name: str) -> None:
    with pytest.raises(InvalidParameter) as refused:
        RunFilters.parse(query)

    assert refused.value.name == name
    assert refused.value.message.startswith(f"{name}: ")
    assert (refused.value.status, refused.value.code) == (400, "InvalidRequest")
