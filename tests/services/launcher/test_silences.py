"""`adxflow silences` and `adxflow alerts`, against a real trigger API."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.launcher import cli, client
from tests.services.trigger.test_alerts_api import DEADLY, seed
from tests.services.trigger.test_flows_api import serving

#: A log line of the services running in the test's process.
_LOGGED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


def printed(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What the command printed, without the log lines of the services under it."""
    return [line for line in capsys.readouterr().out.splitlines() if not _LOGGED.match(line)]


async def test_a_silence_is_added_listed_and_ended_from_the_command_line(
    tmp_path: Path, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serving(tmp_path, namespace) as api:
        await api.put(DEADLY)

        await client.add_silence(
            api.url, "deadly", step="events", key="EventId=42", until=None, lasts="2h", comment="on it"
        )
        [added] = printed(capsys)
        assert added.startswith("silence ")
        assert "set over deadly/events [EventId=42] until " in added
        silence_id = added.split()[1]

        await client.list_silences(api.url, "deadly", everything=False)
        [line] = printed(capsys)
        assert line.startswith(f"{silence_id}  active ")
        assert line.endswith("deadly/events [EventId=42]  by local: on it")

        await client.end_silence(api.url, silence_id)
        assert printed(capsys) == [f"silence {silence_id} ended"]
        await client.list_silences(api.url, None, everything=False)
        assert printed(capsys) == []
        await client.list_silences(api.url, None, everything=True)
        [listed] = printed(capsys)
        assert listed.startswith(f"{silence_id}  ended ")

        with pytest.raises(SystemExit, match="is over: it ended at"):
            await client.end_silence(api.url, silence_id)
        with pytest.raises(SystemExit, match="step: 'mail' is not a step of 'deadly' with an alert"):
            await client.add_silence(
                api.url, "deadly", step="mail", key=None, until=None, lasts="1h", comment="x"
            )


async def test_alerts_prints_each_instance_and_its_silence(
    tmp_path: Path, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serving(tmp_path, namespace) as api:
        await api.put(DEADLY)
        await seed(tmp_path)
        await client.add_silence(
            api.url, "deadly", step="events", key="EventId=1", until=None, lasts="1h", comment="known"
        )
        silence_id = printed(capsys)[0].split()[1]

        await client.show_alerts(api.url, "deadly")
        lines = printed(capsys)

        with pytest.raises(SystemExit, match="flow 'nope' not found"):
            await client.show_alerts(api.url, "nope")

    assert lines[0] == "events  firing  keyed by EventId"
    assert lines[1].split() == [
        "instance",
        "state",
        "since",
        "last",
        "notified",
        "next",
        "repeat",
        "silenced",
    ]
    first, third = lines[2], lines[3]
    assert first.split()[:2] == ["EventId=1", "firing"]
    assert first.endswith(f"({silence_id})")
    assert "until " in first
    assert third.split()[:2] == ["EventId=3", "firing"]
    assert third.endswith("  -")
    assert lines[4:] == ["count  ok", "  (every instance ok)"]


def test_a_silence_needs_until_or_for_and_a_comment(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["silences", "add", "deadly", "--comment", "x"],
        ["silences", "add", "deadly", "--for", "1h", "--until", "2026-03-01T00:00Z", "--comment", "x"],
        ["silences", "add", "deadly", "--for", "1h"],
    ):
        with pytest.raises(SystemExit) as refused:
            cli.main(argv)
        assert refused.value.code == 2
    assert "--comment" in capsys.readouterr().err
