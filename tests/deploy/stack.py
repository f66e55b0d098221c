"""The compose stack as test_stack drives it: real docker, real docker-compose.

`Stack` builds the images (`deploy/offline/build.sh`), brings docker-compose.yml
up with the offline stand-ins under a project name of its own, with fresh
secrets and every host port picked by docker (never the host's 5672, 5432 or
10000), and tears it down with its volumes. Its HTTP helpers speak to the
published ports from the host.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "deploy" / "offline" / "build.sh"
OFFLINE_FILE = ROOT / "deploy" / "offline" / "docker-compose.offline.yml"
#: Every service's health checked every 2 s instead of 15 s, so waits end soon after the fact.
FAST_HEALTH = "\n".join(
    [
        "services:",
        *(
            f"  {name}: {{healthcheck: {{interval: 2s}}}}"
            for name in (
                "rabbitmq",
                "postgres",
                "azurite",
                "mailpit",
                "kusto",
                "trigger",
                "trigger-2",
                "query-worker",
                "render",
                "notifier",
                "history",
            )
        ),
        "",
    ]
)

T = TypeVar("T")


class StackError(AssertionError):
    """The stack did not do what a test waited for; the message says what it was doing."""


def wait_for(what: str, probe: Callable[[], T | None], deadline_seconds: float, every: float = 0.5) -> T:
    """Poll *probe* until it returns something other than None, or fail naming *what*."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise StackError(f"{what}: not within {deadline_seconds:g} s")
        time.sleep(every)


@dataclass
class Stack:
    """One compose project, its secrets in a private env file under *folder*."""

    folder: Path
    project: str = field(default_factory=lambda: f"adxflowtest{secrets.token_hex(4)}")
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.env = {
            "RABBITMQ_PASSWORD": secrets.token_hex(16),
            "POSTGRES_PASSWORD": secrets.token_hex(16),
            "ADXFLOW_API_TOKEN": secrets.token_hex(16),
            "AZURITE_ACCOUNT_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
            # The stand-in of the emulator has no licence; compose still checks the main file's reference.
            "ADX_ACCEPT_EULA": "not-needed",
            **{f"{name}_PUBLISHED_PORT": "0" for name in ("RABBITMQ", "MAIL", "KUSTO", "TRIGGER", "HISTORY")},
        }
        env_file = self.folder / "stack.env"
        env_file.touch(mode=0o600)
        env_file.write_text("".join(f"{key}={value}\n" for key, value in self.env.items()), encoding="utf-8")
        (self.folder / "fast-health.yml").write_text(FAST_HEALTH, encoding="utf-8")

    @property
    def token(self) -> str:
        return self.env["ADXFLOW_API_TOKEN"]

    # -- docker and compose -------------------------------------------------

    def compose(self, *args: str, timeout: float = 300) -> str:
        command = [
            "docker-compose",
            "--no-ansi",
            "--env-file",
            str(self.folder / "stack.env"),
            "-p",
            self.project,
            "-f",
            str(ROOT / "docker-compose.yml"),
            "-f",
            str(OFFLINE_FILE),
            "-f",
            str(self.folder / "fast-health.yml"),
            *args,
        ]
        return run(command, cwd=ROOT, timeout=timeout)

    def containers(self, service: str | None = None) -> list[str]:
        return self.compose("ps", "-q", *([service] if service else [])).split()

    def url(self, service: str, port: int) -> str:
        return "http://" + self.compose("port", service, str(port)).strip()

    def wait_healthy(self, deadline_seconds: float = 180) -> None:
        """Every container healthy, or exited 0 (kusto-seed); one that exited otherwise fails at once."""

        waiting: list[str] = []

        def probe() -> bool | None:
            states = [inspect(container) for container in self.containers()]
            for state in states:
                if state["Status"] == "exited" and state["ExitCode"] != 0 and not state["Restarting"]:
                    raise StackError(f"{state['Name']} exited {state['ExitCode']}:\n{logs(state['Name'])}")
            waiting[:] = [
                state["Name"]
                for state in states
                if not (
                    (state.get("Health") or {}).get("Status") == "healthy"
                    or (state["Status"] == "exited" and state["ExitCode"] == 0)
                )
            ]
            return True if not waiting else None

        try:
            wait_for("every container healthy", probe, deadline_seconds, every=1)
        except StackError as error:
            last = "\n".join(f"--- {name}:\n{logs(name)}" for name in waiting)
            raise StackError(f"{error}; still waiting on {', '.join(waiting)}\n{last}") from None

    # -- HTTP from the host --------------------------------------------------

    def call(self, method: str, url: str, body: Any = None, *, content_type: str = "application/json") -> Any:
        data = None
        if body is not None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = response.read()
        return json.loads(payload) if payload else None

    def run_flow(self, trigger: str, name: str) -> str:
        answer = self.call("POST", f"{trigger}/v1/flows/{name}/runs", {"parameters": {}})
        return str(answer["run_id"])

    def run_status(self, history: str, run_id: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.call("GET", f"{history}/v1/runs/{run_id}")
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise
        return found

    def wait_runs(
        self, history: str, run_ids: Iterable[str], deadline_seconds: float
    ) -> list[dict[str, Any]]:
        """Each run as recorded once it has ended."""
        pending = list(run_ids)
        ended: dict[str, dict[str, Any]] = {}

        def probe() -> bool | None:
            for run_id in list(pending):
                found = self.run_status(history, run_id)
                if found is not None and found["status"] in ("succeeded", "failed"):
                    ended[run_id] = found
                    pending.remove(run_id)
            return True if not pending else None

        wait_for(f"runs ended ({len(pending)} pending)", probe, deadline_seconds)
        return list(ended.values())


def run(command: list[str], *, cwd: Path = ROOT, timeout: float = 300) -> str:
    done = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ}, check=False
    )
    if done.returncode != 0:
        raise StackError(f"{' '.join(command[:6])} ... exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done.stdout


def inspect(container: str) -> dict[str, Any]:
    found = json.loads(run(["docker", "inspect", container]))[0]
    state: dict[str, Any] = found["State"]
    state["Name"] = found["Name"].lstrip("/")
    return state


def logs(container: str) -> str:
    done = subprocess.run(
        ["docker", "logs", "--tail", "30", container], capture_output=True, text=True, check=False
    )
    return (done.stdout + done.stderr)[-3000:]
