"""A flow's versions: every save kept with its definition, who saved it and when.

Each save of a flow (``POST``/``PUT /v1/flows``, ``adxflow flows apply``, the
flow pages' on/off switch, a restore) is a version, numbered as the flow's
ETag is. A version keeps its *definition*: a YAML body as it was sent,
comments and all, or a JSON body dumped as YAML in its own field order. Two
versions compare as a unified diff of their definitions; restoring one saves
its definition again, checked as any save is, as a new version.

A deleted flow's versions are kept: its history can still be read, diffed and
restored from (a restore creates the flow again). A flow created again under
the same name numbers on from its last version, so that a number names one
definition for good.
"""

from __future__ import annotations

import datetime as dt
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml


@dataclass(frozen=True)
class SavedVersion:
    """One save of a flow as its history lists it: when, by whom, what it changed."""

    flow: str
    version: int
    saved_at: dt.datetime
    #: The label of who saved it: ``token`` or ``local``; None where it was not recorded.
    saved_by: str | None
    summary: str
    restored_from: int | None


@dataclass(frozen=True)
class FlowVersion(SavedVersion):
    """One save of a flow with what it saved."""

    #: The YAML text as saved.
    definition: str
    #: The document as stored (the flow as the API reads it back).
    document: dict[str, Any]


def definition(body: Any, sent: str | None) -> str:
    """What a save keeps as its definition: the YAML *sent*, else *body* dumped as YAML."""
    if sent is not None:
        return sent
    return yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


def summarize(
    before: Mapping[str, Any] | None, after: Mapping[str, Any], *, restored_from: int | None
) -> str:
    """What changed from *before* (None: nothing, the flow is new) to *after*, in a few words."""
    if restored_from is not None:
        said = f"restored version {restored_from}"
        return said if before is not None else f"{said} (the flow was created again)"
    if before is None:
        return "created"
    changes: list[str] = []
    for key in dict.fromkeys([*before, *after]):
        if key == "steps" or before.get(key) == after.get(key):
            continue
        if key == "enabled":
            changes.append("enabled" if after.get(key) else "disabled")
        else:
            changes.append(f"{key} {'removed' if key not in after else 'changed'}")
    changes.extend(_steps(before.get("steps") or [], after.get("steps") or []))
    return "; ".join(changes) if changes else "no change to the document"


def _steps(before: list[Any], after: list[Any]) -> list[str]:
    old = {step.get("id"): step for step in before if isinstance(step, dict)}
    new = {step.get("id"): step for step in after if isinstance(step, dict)}
    said: list[str] = []
    added = [name for name in new if name not in old]
    removed = [name for name in old if name not in new]
    changed = [name for name in new if name in old and old[name] != new[name]]
    for verb, names in (("added", added), ("removed", removed), ("changed", changed)):
        if names:
            said.append(f"step{'s' if len(names) > 1 else ''} {', '.join(map(str, names))} {verb}")
    if not said and list(old) != list(new):
        said.append("steps reordered")
    return said


def unified_diff(name: str, older: FlowVersion, newer: FlowVersion) -> list[str]:
    """The unified diff of two versions' definitions, line by line (no line endings)."""
    return list(
        difflib.unified_diff(
            older.definition.splitlines(),
            newer.definition.splitlines(),
            fromfile=f"{name} version {older.version}",
            tofile=f"{name} version {newer.version}",
            lineterm="",
        )
    )
