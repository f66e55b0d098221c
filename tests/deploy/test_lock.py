"""requirements.lock: exact versions of everything pyproject.toml asks for, and what the tests run on.

The lock is re-made by one command, written in its header (and in the README);
a dependency added to pyproject.toml without re-locking fails here, naming it
and the command.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
#: The one command that re-locks, as README.md states it.
RELOCK = (
    "uv pip compile pyproject.toml --extra test --extra embedded --universal --python-version 3.11 "
    "-o requirements.lock"
)
EXTRAS = ("test", "embedded")


def locked() -> dict[str, list[Requirement]]:
    """Each pinned package, with its pins (a package may be pinned per Python version)."""
    pins: dict[str, list[Requirement]] = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith((" ", "#")):
            requirement = Requirement(line)
            pins.setdefault(canonicalize_name(requirement.name), []).append(requirement)
    return pins


def applying(pins: list[Requirement]) -> list[Version]:
    """The versions of *pins* whose markers hold on this interpreter."""
    environment = {**default_environment(), "extra": ""}
    return [
        Version(next(iter(pin.specifier)).version)
        for pin in pins
        if pin.marker is None or pin.marker.evaluate(environment)  # type: ignore[arg-type]
    ]


def asked() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = [Requirement(text) for text in project["dependencies"]]
    for extra in EXTRAS:
        wanted += [Requirement(text) for text in project["optional-dependencies"][extra]]
    return wanted


def test_the_lock_says_the_one_command_that_re_makes_it_and_the_readme_says_the_same() -> None:
    header = LOCK.read_text(encoding="utf-8").splitlines()[:2]
    assert header[1].strip("# ") == RELOCK
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert RELOCK in re.sub(r"\s*\\\n\s*", " ", readme)


def test_every_pin_is_exact() -> None:
    for name, pins in locked().items():
        for pin in pins:
            assert [spec.operator for spec in pin.specifier] == ["=="], f"{name} is not pinned exactly: {pin}"


def test_everything_pyproject_asks_for_is_locked_at_a_version_it_admits() -> None:
    pins = locked()
    for requirement in asked():
        name = canonicalize_name(requirement.name)
        assert name in pins, (
            f"requirements.lock does not pin {requirement.name} (pyproject.toml asks for {requirement}); "
            f"re-lock with: {RELOCK}"
        )
        for version in applying(pins[name]):
            assert requirement.specifier.contains(version, prereleases=True), (
                f"requirements.lock pins {requirement.name}=={version}, which pyproject.toml's "
                f"{requirement} refuses; re-lock with: {RELOCK}"
            )


def test_the_tests_run_on_the_locked_versions() -> None:
    drifted = []
    for name, pins in locked().items():
        for version in applying(pins):
            try:
                installed = Version(importlib.metadata.version(name))
            except importlib.metadata.PackageNotFoundError:
                drifted.append(f"{name} is not installed (locked: {version})")
                continue
            if installed != version:
                drifted.append(f"{name} {installed} is installed, {version} locked")
    assert not drifted, (
        "this environment is not the lock's: "
        + "; ".join(drifted)
        + " (install with: pip install --constraint requirements.lock -e '.[test,embedded]')"
    )


def test_every_upper_bound_in_pyproject_says_why_beside_it() -> None:
    lines = (ROOT / "pyproject.toml").read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        quoted = re.fullmatch(r'\s*"([^"]+)",?', line)
        if quoted is None or not re.search(r"[<=]=?\s*\d", quoted.group(1).split(";")[0]):
            continue
        requirement = Requirement(quoted.group(1))
        if not any(spec.operator in ("<", "<=", "==", "~=") for spec in requirement.specifier):
            continue
        above = lines[index - 1].strip() if index else ""
        assert above.startswith("#"), (
            f"pyproject.toml: {requirement} has an upper bound without its reason above it"
        )
