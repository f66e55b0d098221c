"""`adxflow flows history`, `flows diff` and `flows restore`, against a real trigger API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.launcher import cli, client, versions
from tests.services.launcher.test_silences import printed
from tests.services.trigger.test_flows_api import STORMS, STORMS_YAML, serving

COMMENTED = "# Mondays at half past seven\n" + STORMS_YAML


async def test_history_diff_and_restore_from_the_command_line(
    tmp_path: Path, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "weekly-storms.yaml"
    async with serving(tmp_path, namespace) as api:
        file.write_text(COMMENTED)
        await client.apply(api.url, str(file))
        file.write_text(COMMENTED.replace('"Weekly storms"', '"Storms this week"'))
        await client.apply(api.url, str(file))
        printed(capsys)

        await versions.history(api.url, "weekly-storms")
        table = printed(capsys)
        await versions.diff(api.url, "weekly-storms", 1, 2)
        diff = printed(capsys)
        await versions.restore(api.url, "weekly-storms", 1, if_match=2)
        restored = printed(capsys)
        third = await api.call("GET", "/v1/flows/weekly-storms/versions/3")
        with pytest.raises(
            SystemExit, match=r"flow 'weekly-storms' has no version 9 \(its versions: 1 to 3\)"
        ):
            await versions.diff(api.url, "weekly-storms", 1, 9)
        with pytest.raises(SystemExit, match="is at version 3"):
            await versions.restore(api.url, "weekly-storms", 2, if_match=2)

    assert table[0].split() == ["version", "saved", "at", "by", "what", "changed"]
    assert [line.split()[0] for line in table[1:3]] == ["2*", "1"]
    assert table[1].endswith("local     step mail changed")
    assert table[2].endswith("local     created")
    assert table[3] == "* the version weekly-storms is at"
    assert diff[:2] == ["--- weekly-storms version 1", "+++ weekly-storms version 2"]
    assert '-    subject: "Weekly storms"' in diff
    assert '+    subject: "Storms this week"' in diff
    assert restored == ["weekly-storms: version 1 restored as version 3"]
    # The file went as YAML: its comment is part of the version, and came back with the restore.
    assert third.body["definition"] == COMMENTED


async def test_apply_sends_a_json_file_as_json_and_its_version_is_the_document_as_yaml(
    tmp_path: Path, namespace: str
) -> None:
    file = tmp_path / "daily-storms.json"
    file.write_text(json.dumps(STORMS))
    async with serving(tmp_path, namespace) as api:
        await client.apply(api.url, str(file))
        kept = await api.call("GET", "/v1/flows/daily-storms/versions/1")

    assert kept.body["definition"].startswith("name: daily-storms\ndescription: ")


def test_the_version_commands_parse_their_arguments() -> None:
    parser = cli._parser()
    diff = parser.parse_args(["flows", "diff", "daily-storms", "1", "3", "--url", "http://t"])
    restore = parser.parse_args(["flows", "restore", "daily-storms", "2", "--if-match", "5"])
    history = parser.parse_args(["flows", "history", "daily-storms"])

    assert (diff.flows_command, diff.name, diff.older, diff.newer, diff.url) == (
        "diff",
        "daily-storms",
        1,
        3,
        "http://t",
    )
    assert (restore.version, restore.if_match) == (2, 5)
    assert (history.flows_command, history.name) == ("history", "daily-storms")
    with pytest.raises(SystemExit):
        parser.parse_args(["flows", "diff", "daily-storms", "one", "3"])
