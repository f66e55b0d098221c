"""A flow's versions end to end: applied twice with `adxflow`, its history, a diff, a restore that
runs, and its page; flows and history in PostgreSQL over RabbitMQ."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.conftest import System
from tests.e2e.test_examples import EXAMPLES, cli

NAME = "daily-storm-report"


@pytest.mark.parametrize("system", ["rabbitmq+postgres"], indirect=True)
async def test_a_flow_applied_twice_has_a_history_a_diff_and_a_restore_that_runs(
    system: System, tmp_path: Path
) -> None:
    file = tmp_path / f"{NAME}.yaml"
    shutil.copy(EXAMPLES / f"{NAME}.yaml", file)
    written = file.read_text()
    code, output = await cli(system, "flows", "apply", "-f", str(file))
    assert code == 0, output
    file.write_text(written.replace("title: Storm events by state", "title: Storms by state"))
    code, output = await cli(system, "flows", "apply", "-f", str(file))
    assert code == 0, output

    code, history = await cli(system, "flows", "history", NAME)
    assert code == 0, history
    code, diff = await cli(system, "flows", "diff", NAME, "1", "2")
    assert code == 0, diff
    code, restored = await cli(system, "flows", "restore", NAME, "1", "--if-match", "2")
    assert code == 0, restored
    code, refused = await cli(system, "flows", "restore", NAME, "2", "--if-match", "2")
    code_run, ran = await cli(system, "run", NAME, "--wait")
    async with system.session.get(f"{system.trigger_url}/v1/flows/{NAME}/versions/3") as response:
        third = await response.json()
    async with system.session.get(f"{system.history_url}/ui/flows/{NAME}") as response:
        page = await response.text()

    rows = [line.split() for line in history.splitlines() if line[:7].strip().rstrip("*").isdigit()]
    assert [(row[0], row[3]) for row in rows] == [("2*", "local"), ("1", "local")]
    assert "step by_state changed" in history
    assert [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")] == [
        "-    title: Storm events by state",
        "+    title: Storms by state",
    ]
    assert f"{NAME}: version 1 restored as version 3" in restored
    assert code != 0
    assert "is at version 3" in refused
    assert (code_run, "run succeeded" in ran) == (0, True), ran
    # The example's text came back as written, its comments with it.
    assert (third["definition"], third["restored_from"]) == (written, 1)
    assert "restored version 1" in page
    assert page.count("data-post-form data-restore hidden>") == 2
