"""deploy/offline, read as files: the override selects only images build.sh tags,
and the Dockerfile builds on a base given as a build argument without pulling a
frontend. (tests/deploy/test_stack.py builds and runs them.)"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.deploy.compose import DOCKERFILE, ROOT, services

OFFLINE = ROOT / "deploy" / "offline"


def tagged_by_build_script() -> set[str]:
    script = (OFFLINE / "build.sh").read_text(encoding="utf-8")
    return (
        set(re.findall(r"^build (\S+) ", script, flags=re.MULTILINE))
        | set(re.findall(r"-t (\S+) ", script))
        | set(re.findall(r"^BASE=(\S+)$", script, flags=re.MULTILINE))
    )


def override() -> dict[str, dict[str, object]]:
    found: dict[str, dict[str, object]] = yaml.safe_load(
        (OFFLINE / "docker-compose.offline.yml").read_text(encoding="utf-8")
    )["services"]
    return found


def test_the_override_replaces_every_registry_image_with_one_the_build_script_tags() -> None:
    tagged = {tag.replace("$SUITE", "bookworm") for tag in tagged_by_build_script()}
    main = services()
    replaced = override()
    for name, service in main.items():
        image = str(service["image"])
        if "build" in service:
            args = replaced[name]["build"]["args"]  # type: ignore[index]
            assert args["PYTHON_IMAGE"] in tagged, name
        else:
            assert str(replaced[name]["image"]) in tagged, (name, image)
    assert set(replaced) <= set(main)


def test_every_stand_in_builds_from_the_imported_base_or_an_image_built_before_it() -> None:
    tagged = {tag.replace("$SUITE", "bookworm") for tag in tagged_by_build_script()}
    for dockerfile in sorted(OFFLINE.glob("*/Dockerfile")):
        default = re.search(r"^ARG (?:BASE|ADXFLOW_IMAGE)=(\S+)$", dockerfile.read_text(), flags=re.MULTILINE)
        assert default, dockerfile
        assert default.group(1) in tagged, dockerfile


def test_the_dockerfile_takes_its_base_and_a_ca_bundle_as_arguments_and_no_syntax_line() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert not re.search(r"^#\s*syntax\s*=", text, flags=re.MULTILINE | re.IGNORECASE)
    first_from = text.index("\nFROM ")
    assert text.index("ARG PYTHON_IMAGE=python:3.11-slim-bookworm") < first_from
    build, final = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert "ARG CA_BUNDLE" in build
    assert "CA_BUNDLE" not in final


def test_build_script_is_executable() -> None:
    assert Path(OFFLINE / "build.sh").stat().st_mode & 0o111
