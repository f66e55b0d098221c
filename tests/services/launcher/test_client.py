"""`adxflow flows apply --if-match`, against a real trigger API."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.launcher import client
from tests.services.trigger.test_flows_api import STORMS, flow_with, serving


async def test_apply_if_match_replaces_only_the_version_it_names(
    tmp_path: Path, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "storms.yaml"
    async with serving(tmp_path, namespace) as api:
        await api.put(STORMS)
        file.write_text(yaml.safe_dump(flow_with(STORMS, description="edited from version 1")))

        await client.apply(api.url, str(file), if_match=1)
        assert "updated (version 2)" in capsys.readouterr().out

        with pytest.raises(SystemExit) as refused:
            await client.apply(api.url, str(file), if_match=1)
        assert refused.value.code == 1
        printed = capsys.readouterr().out
        assert "refused: If-Match: flow 'daily-storms' is at version 2" in printed
        assert (await api.call("GET", "/v1/flows/daily-storms")).body["version"] == 2


async def test_apply_if_match_takes_one_file(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(flow_with(STORMS, name=name)))

    with pytest.raises(SystemExit, match="--if-match takes one flow file"):
        await client.apply("http://127.0.0.1:9", str(tmp_path), if_match=1)
