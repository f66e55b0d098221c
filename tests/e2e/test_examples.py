"""The example flows: valid, and each runs against the embedded sample data.
Applied and run through the command line, as a user would."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
import yaml

from services.launcher.client import validate_file
from tests.e2e.conftest import System

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def cli(system: System, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services",
        *args,
        env={
            **os.environ,
            "ADXFLOW_TRIGGER_URL": system.trigger_url,
            "ADXFLOW_HISTORY_URL": system.history_url,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, output.decode()


def test_every_example_is_valid() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert len(files) >= 6
    assert {path.name: validate_file(path) for path in files} == {path.name: [] for path in files}


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_every_example_applies_and_runs_on_the_sample_data(system: System) -> None:
    code, output = await cli(system, "flows", "apply", "-f", str(EXAMPLES))
    assert code == 0, output
    assert output.count(" created;") == len(list(EXAMPLES.glob("*.yaml")))
    code, listed = await cli(system, "flows", "list")
    assert code == 0, listed
    assert "every day at 08:00 Europe/Berlin" in listed

    for path in sorted(EXAMPLES.glob("*.yaml")):
        name = yaml.safe_load(path.read_text())["name"]
        code, output = await cli(system, "run", name, "--wait")
        assert code == 0, f"{name}: {output}"
        assert "run succeeded" in output, output

    code, history = await cli(system, "runs", "list", "--flow", "async-rebuild")
    assert code == 0, history
    assert "succeeded" in history
    run_id = history.split()[0]
    code, shown = await cli(system, "runs", "show", run_id)
    assert code == 0, shown
    assert "rebuild" in shown
    subjects = [path.read_text(errors="replace") for path in system.smtp.messages()]
    assert any("Rebuild Completed" in text for text in subjects)
    assert any("Storm dashboard" in text for text in subjects)


@pytest.mark.parametrize("system", ["in_process"], indirect=True)
async def test_a_failing_run_makes_run_wait_exit_non_zero(system: System) -> None:
    await system.save_flow(
        {
            "name": "broken",
            "connection": "local",
            "database": "Samples",
            "steps": [{"id": "q", "action": "run_query", "query": "NoSuchTable | count"}],
        }
    )
    code, output = await cli(system, "run", "broken", "--wait")
    assert code == 1
    assert "KustoSemanticError" in output
    code, output = await cli(system, "run", "broken", "--param", "x=1")
    assert code != 0
    assert "parameters.x" in output
