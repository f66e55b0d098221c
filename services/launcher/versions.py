"""`adxflow flows history`, `flows diff` and `flows restore`: a flow's versions from the command line."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp

from services.launcher.client import _call, _headers, _local, _refusal


def _flow(name: str) -> str:
    return quote(name, safe="")


def format_history(body: dict[str, Any]) -> str:
    """A flow's versions as a table, newest first: version, when, who, what changed."""
    current = body.get("current")
    lines = [f"{'version':>7}  {'saved at':<19}  {'by':<8}  what changed"]
    for entry in body["versions"]:
        mark = "*" if entry["version"] == current else " "
        lines.append(
            f"{entry['version']:>6}{mark}  {_local(entry['saved_at']):<19}  "
            f"{entry['saved_by'] or '-':<8}  {entry['summary']}"
        )
    lines.append(
        f"* the version {body['flow']} is at" if current is not None else f"{body['flow']} is deleted"
    )
    return "\n".join(lines)


async def history(trigger_url: str, name: str) -> None:
    async with aiohttp.ClientSession(headers=_headers()) as session:
        status, body = await _call(session, "GET", f"{trigger_url}/v1/flows/{_flow(name)}/versions")
    if status != 200:
        raise SystemExit(f"adxflow: {_refusal(status, body)}")
    print(format_history(body))


async def diff(trigger_url: str, name: str, older: int, newer: int) -> None:
    """Print the unified diff of two versions' definitions; nothing when they are the same."""
    query = {"from": str(older), "to": str(newer)}
    async with aiohttp.ClientSession(headers=_headers()) as session:
        status, body = await _call(session, "GET", f"{trigger_url}/v1/flows/{_flow(name)}/diff", params=query)
    if status != 200:
        raise SystemExit(f"adxflow: {_refusal(status, body)}")
    for line in body["lines"]:
        print(line)


async def restore(trigger_url: str, name: str, version: int, *, if_match: int | None = None) -> None:
    headers = {"If-Match": f'"{if_match}"'} if if_match is not None else {}
    path = f"{trigger_url}/v1/flows/{_flow(name)}/versions/{version}/restore"
    async with aiohttp.ClientSession(headers=_headers()) as session:
        status, body = await _call(session, "POST", path, headers=headers)
    if status not in (200, 201):
        raise SystemExit(f"adxflow: {_refusal(status, body)}")
    print(f"{name}: version {version} restored as version {body['version']}")
