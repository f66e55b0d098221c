"""The rooms of the tree: import-linter's contracts hold, each fails on an import it forbids, and a
service run alone loads nothing of the other services, the launcher or embedded mode."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))
SERVICES = ("trigger", "query_worker", "render", "notifier", "history")
#: The services that check a query's operators with duckdb-kql's Kusto grammar (common.contracts.operators).
KQL_GRAMMAR = ("trigger", "query_worker")


def contract_names() -> dict[str, str]:
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["importlinter"]
    return {contract["id"]: contract["name"] for contract in config["contracts"]}


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LINT_IMPORTS, "--no-logo", "--no-cache", str(PYPROJECT)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(ROOT)

    assert result.returncode == 0, result.stdout + result.stderr
    for name in contract_names().values():
        assert f"{name} KEPT" in result.stdout


#: One import each contract forbids: (contract id, module that gains it, the import, the module imported).
PLANTED = {
    "a contract imports the platform": ("rooms", "common/contracts/results.py", "common.platform.config"),
    "the platform imports a service": ("rooms", "common/platform/metrics.py", "services.render.table"),
    "a service imports the launcher": ("rooms", "services/render/csvfile.py", "services.launcher.client"),
    "a service imports another": ("services", "services/notifier/ledger.py", "services.history.retention"),
    "a service imports the stand-ins": (
        "embedded",
        "services/history/retention.py",
        "services.embedded.outbox",
    ),
    "the platform imports duckdb": ("embedded", "common/platform/database.py", "duckdb"),
    "a service imports aiosmtpd": ("embedded", "services/notifier/smtp.py", "aiosmtpd"),
}


@pytest.mark.parametrize(("contract", "path", "imported"), list(PLANTED.values()), ids=list(PLANTED))
def test_a_planted_import_breaks_its_contract(
    tmp_path: Path, contract: str, path: str, imported: str
) -> None:
    for room in ("common", "services"):
        shutil.copytree(ROOT / room, tmp_path / room, ignore=shutil.ignore_patterns("__pycache__"))
    with (tmp_path / path).open("a", encoding="utf-8") as module:
        module.write(f"\nimport {imported}\n")

    result = lint_imports(tmp_path)

    assert result.returncode != 0, result.stdout
    assert f"{contract_names()[contract]} BROKEN" in result.stdout
    importer = path.removesuffix(".py").replace("/", ".")
    assert f"{importer} -> {imported}" in result.stdout


#: What `python -m services.NAME` imports before it serves.
ENTRY = (
    "import common.platform.serving, services.{name}.service\n"
    "import json, sys\n"
    "print(json.dumps(sorted(sys.modules)))"
)


@pytest.mark.parametrize("name", SERVICES)
def test_a_service_run_alone_loads_nothing_of_the_others_or_of_embedded_mode(name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", ENTRY.format(name=name)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = json.loads(result.stdout)
    assert f"services.{name}.service" in loaded

    forbidden = [f"services.{other}" for other in SERVICES if other != name]
    forbidden += ["services.launcher", "services.embedded", "duckdb", "aiosmtpd"]
    if name not in KQL_GRAMMAR:
        forbidden.append("duckdb_kql")
    assert [module for module in loaded if within(module, forbidden)] == []


def within(module: str, packages: list[str]) -> bool:
    return any(module == package or module.startswith(f"{package}.") for package in packages)
