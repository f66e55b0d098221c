"""The trigger API as the flow pages see it: list flows, switch one on or off, read its alerts,
set and end silences, read its versions, diff two and restore one, start a run; and for the
editor, list the templates, check a draft, save a definition as written and start a test run of one.

The history app keeps one :class:`aiohttp.ClientSession` for these calls, with
:data:`TIMEOUT`, so page loads reuse its connections.
"""

from __future__ import annotations

import json as json_module
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from pydantic import SecretStr

from common.contracts.errors import AdxflowError

#: How long a page waits for the trigger API before saying it did not answer.
TIMEOUT = aiohttp.ClientTimeout(total=10)


class TriggerUnavailable(AdxflowError):
    """The trigger API did not answer, or refused; the message says what it said."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class TriggerClient:
    def __init__(self, url: str, token: SecretStr | None, session: aiohttp.ClientSession) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token is not None else {}
        self._session = session

    def __repr__(self) -> str:
        return f"TriggerClient({self.url!r})"

    async def _call(
        self, method: str, path: str, json: Any = None, headers: dict[str, str] | None = None
    ) -> Any:
        if not self.url:
            raise TriggerUnavailable(
                "the trigger API's address is not configured (ADXFLOW_TRIGGER_PUBLIC_URL)"
            )
        try:
            async with self._session.request(
                method, f"{self.url}{path}", json=json, headers={**self._headers, **(headers or {})}
            ) as response:
                body = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
            raise TriggerUnavailable(f"the trigger API at {self.url} did not answer: {reason}") from exc
        if status >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            message = error.get("message") or f"HTTP {status}"
            if status == 412:
                message = f"{message} (reload the page to see the flow as it is now)"
            raise TriggerUnavailable(f"the trigger API refused: {message}", status=status)
        return body

    async def flows(self) -> list[dict[str, Any]]:
        body = await self._call("GET", "/v1/flows")
        return list(body["flows"])

    async def set_enabled(self, name: str, enabled: bool, *, version: int | None = None) -> dict[str, Any]:
        """Read the flow, set ``enabled``, and save it back; the saved flow's view.

        The save asks for the version the page showed (*version*), or else the
        one just read: a flow someone saved meanwhile is refused (412, with the
        version it is at), not overwritten with what the page knew of it.
        """
        view = await self._call("GET", f"/v1/flows/{_segment(name)}")
        document = dict(view["document"])
        document["enabled"] = enabled
        expected = version if version is not None else int(view["version"])
        saved: dict[str, Any] = await self._call(
            "PUT", f"/v1/flows/{_segment(name)}", json=document, headers={"If-Match": f'"{expected}"'}
        )
        return saved

    async def flow(self, name: str) -> dict[str, Any]:
        view: dict[str, Any] = await self._call("GET", f"/v1/flows/{_segment(name)}")
        return view

    async def versions(self, name: str) -> dict[str, Any]:
        """The flow's versions, newest first, and the one it is at."""
        found: dict[str, Any] = await self._call("GET", f"/v1/flows/{_segment(name)}/versions")
        return found

    async def version(self, name: str, version: int) -> dict[str, Any]:
        """One version with its definition as saved."""
        found: dict[str, Any] = await self._call("GET", f"/v1/flows/{_segment(name)}/versions/{version}")
        return found

    async def diff(self, name: str, older: int, newer: int) -> list[str]:
        query = urlencode({"from": older, "to": newer})
        body = await self._call("GET", f"/v1/flows/{_segment(name)}/diff?{query}")
        return list(body["lines"])

    async def restore(self, name: str, version: int, *, current: int | None) -> dict[str, Any]:
        """Save *version* again as a new version, only over *current* (the version the page showed)."""
        headers = {"If-Match": f'"{current}"'} if current is not None else {}
        path = f"/v1/flows/{_segment(name)}/versions/{version}/restore"
        saved: dict[str, Any] = await self._call("POST", path, headers=headers)
        return saved

    async def alerts(self, name: str) -> dict[str, Any]:
        """The flow's alerts: each one's instances and latest transitions, and its silences in force."""
        found: dict[str, Any] = await self._call("GET", f"/v1/flows/{_segment(name)}/alerts")
        return found

    async def silences(self, flow: str, state: str) -> list[dict[str, Any]]:
        body = await self._call("GET", f"/v1/silences?{urlencode({'flow': flow, 'state': state})}")
        return list(body["silences"])

    async def silence(self, asked: dict[str, Any]) -> dict[str, Any]:
        silence: dict[str, Any] = await self._call("POST", "/v1/silences", json=asked)
        return silence

    async def get_silence(self, silence_id: str) -> dict[str, Any]:
        silence: dict[str, Any] = await self._call("GET", f"/v1/silences/{_segment(silence_id)}")
        return silence

    async def end_silence(self, silence_id: str) -> None:
        await self._call("DELETE", f"/v1/silences/{_segment(silence_id)}")

    async def templates(self) -> list[dict[str, Any]]:
        """The example flows offered as templates, with what each needs configured."""
        body = await self._call("GET", "/v1/flow-templates")
        return list(body["templates"])

    async def template(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = await self._call("GET", f"/v1/flow-templates/{_segment(name)}")
        return found

    async def validate(self, text: str) -> dict[str, Any]:
        """What a save of the YAML *text* would refuse, each problem placed in the text; nothing saved."""
        status, body = await self.forward("POST", "/v1/flows:validate", yaml_text=text)
        if status != 200 or not isinstance(body, dict):
            raise TriggerUnavailable(f"the trigger API refused the check: HTTP {status}", status=status)
        return body

    async def save_definition(self, text: str, *, name: str | None, version: int | None) -> tuple[int, Any]:
        """Save the YAML *text* as written (comments kept): over *version* of flow *name*, or as a new
        flow when *name* is None (refused with 409 when a flow of that name exists). The status and body."""
        if name is None:
            return await self.forward("POST", "/v1/flows", yaml_text=text)
        headers = {"If-Match": f'"{version}"'} if version is not None else {}
        return await self.forward("PUT", f"/v1/flows/{_segment(name)}", yaml_text=text, headers=headers)

    async def forward(
        self,
        method: str,
        path: str,
        *,
        yaml_text: str | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """The trigger's status and JSON body for one request, refusals included (a body that is not
        JSON becomes an error body saying what came); TriggerUnavailable only when it did not answer."""
        if not self.url:
            raise TriggerUnavailable(
                "the trigger API's address is not configured (ADXFLOW_TRIGGER_PUBLIC_URL)"
            )
        sent = {**self._headers, **(headers or {})}
        data = None
        if yaml_text is not None:
            sent["Content-Type"] = "application/yaml; charset=utf-8"
            data = yaml_text.encode()
        try:
            async with self._session.request(
                method, f"{self.url}{path}", data=data, json=json, headers=sent
            ) as response:
                status, raw = response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError) as exc:
            reason = str(exc) or type(exc).__name__
            raise TriggerUnavailable(f"the trigger API at {self.url} did not answer: {reason}") from exc
        try:
            return status, json_module.loads(raw)
        except ValueError:
            message = f"the trigger API answered HTTP {status}: {raw.strip()[:200]}"
            code = "Unavailable" if status < 400 else "Refused"
            return status, {"error": {"code": code, "message": message}}

    async def run(self, name: str, body: dict[str, Any], *, key: str | None = None) -> dict[str, Any]:
        """Start a run of the flow now (*body* as ``POST /v1/flows/{name}/runs`` takes it); its acceptance.

        With *key* (an Idempotency-Key), the same request sent twice starts one run.
        """
        headers = {"Idempotency-Key": key} if key is not None else {}
        path = f"/v1/flows/{_segment(name)}/runs"
        accepted: dict[str, Any] = await self._call("POST", path, json=body, headers=headers)
        return accepted


def _segment(name: str) -> str:
    return quote(name, safe="")
