"""`adxflow flows validate`, here and against a real trigger API, and `adxflow flows template(s)`."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from services.launcher import cli
from tests.services.trigger.test_flows_api import STORMS_YAML, serving

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

#: Valid as a document; this server refuses its webhook host (only hooks.example.com is allowed).
HOOKED = STORMS_YAML.replace(
    "    action: send_email\n    to: [team@example.com]\n",
    "    action: post_webhook\n    url: https://evil.example.net/collect\n",
).replace('    subject: "Weekly storms"\n    attachments: [by_state]\n', "")


async def adxflow(*args: str, server: str | None = None) -> tuple[int, str, str]:
    env = {key: value for key, value in os.environ.items() if key != "ADXFLOW_TRIGGER_URL"}
    if server is not None:
        env["ADXFLOW_TRIGGER_URL"] = server
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def test_offline_each_problem_is_printed_at_its_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "storms.yaml"
    file.write_text(
        STORMS_YAML.replace("id: mail", "id: by_state").replace(
            "    subject:", "    colour: red\n    subject:"
        )
    )

    with pytest.raises(SystemExit) as failed:
        cli.main(["flows", "validate", str(file), "--offline"])

    assert failed.value.code == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{file}:14:5: steps[1].colour: Extra inputs are not permitted",
    ]


def test_offline_a_duplicate_id_and_a_syntax_error_are_placed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    duplicate, broken = tmp_path / "duplicate.yaml", tmp_path / "broken.yaml"
    duplicate.write_text(STORMS_YAML.replace("id: mail", "id: by_state"))
    broken.write_text("name: x\nsteps: [\n")

    with pytest.raises(SystemExit):
        cli.main(["flows", "validate", str(tmp_path), "--offline"])

    broken_line, duplicate_line = capsys.readouterr().out.splitlines()
    assert broken_line.startswith(f"{broken}:3:1: not valid YAML")
    assert duplicate_line == f"{duplicate}:11:9: steps[1].id: 'by_state' is used by an earlier step"


async def test_with_a_server_its_checks_are_printed_too(tmp_path: Path, namespace: str) -> None:
    file = tmp_path / "hooked.yaml"
    file.write_text(HOOKED)
    line = HOOKED[: HOOKED.index("https://evil")].count("\n") + 1

    async with serving(tmp_path, namespace) as api:
        asked = await adxflow("flows", "validate", str(file), server=api.url)
        offline = await adxflow("flows", "validate", str(file), "--offline", server=api.url)
        named = await adxflow("flows", "validate", str(file), "--url", api.url)

    code, out, _ = asked
    assert code == 1
    assert out.startswith(f"{file}:{line}:10: steps[1].url: ")
    assert "evil.example.net" in out
    assert offline[:2] == (0, f"{file}: ok\n")
    assert named[:2] == asked[:2]


async def test_a_template_printed_is_the_example_as_shipped_here_and_from_a_server(
    tmp_path: Path, namespace: str
) -> None:
    shipped = (EXAMPLES / "daily-storm-report.yaml").read_text()

    here = await adxflow("flows", "template", "daily-storm-report")
    listed_here = await adxflow("flows", "templates")
    missing = await adxflow("flows", "template", "no-such-example")
    async with serving(tmp_path, namespace) as api:
        served = await adxflow("flows", "template", "daily-storm-report", server=api.url)
        listed = await adxflow("flows", "templates", server=api.url)
        missing_there = await adxflow("flows", "template", "no-such-example", server=api.url)

    assert here == (0, shipped, "")
    assert served == (0, shipped, "")
    assert listed == listed_here
    names = [row.split()[0] for row in listed[1].splitlines()]
    assert names == sorted(path.stem for path in EXAMPLES.glob("*.yaml"))
    assert "needs webhook 'incidents-slack'" in listed[1]
    assert missing[0] != 0
    assert "no flow template 'no-such-example'" in missing[2]
    assert missing_there[0] != 0
    assert "not found" in missing_there[2]
