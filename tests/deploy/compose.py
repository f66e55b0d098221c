"""docker-compose.yml as the deploy tests read it: parsed with PyYAML (anchors and
merge keys resolved), with compose's ``${VAR}`` references interpolated."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

#: The five services and the `adxflow serve` argument each runs.
SERVICES = ("trigger", "query_worker", "render", "notifier", "history")
#: ``${NAME}``, ``${NAME:-default}``, ``${NAME-default}``, ``${NAME:?message}``, ``${NAME?message}``.
REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


class MissingVariable(KeyError):
    """A ``${NAME:?message}`` reference whose variable is unset: compose refuses to start."""


def load() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return compose


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = load()["services"]
    return found


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """*value* with its references replaced from *env*, as compose does."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in ("-", ":-") and unset:
            return str(arg)
        if op in ("?", ":?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        return current or ""

    return REFERENCE.sub(replace, value)


def environment(service: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """The service's environment, interpolated."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: interpolate(str(value), env) for key, value in raw.items()}


def mounts(service: Mapping[str, Any]) -> dict[PurePosixPath, Path]:
    """Bind mounts of files from the repository: container path to the file here."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            found[PurePosixPath(target)] = ROOT / source
    return found


def host_path(service: Mapping[str, Any], container_path: str) -> Path:
    """The repository file a container path of *service* is mounted from."""
    path = PurePosixPath(container_path)
    for target, source in mounts(service).items():
        if path == target or target in path.parents:
            return source / path.relative_to(target)
    raise AssertionError(f"{container_path} is not mounted from the repository")


def example_env() -> dict[str, str]:
    """The variables .env.example sets (commented lines excluded)."""
    values = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values
