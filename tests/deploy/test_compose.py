"""docker-compose.yml, read as compose reads it: every service is watched, every
dependency waits on a condition, the emulator's licence is accepted explicitly,
and no secret is written down."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy.engine import make_url

from common.platform.connections import Connections, NoAuth
from tests.deploy.compose import (
    DOCKERFILE,
    REFERENCE,
    ROOT,
    SERVICES,
    MissingVariable,
    example_env,
    host_path,
    interpolate,
    load,
    services,
)

#: Where the postgres image finds the scripts it runs once, when its data directory is made.
INIT = "/docker-entrypoint-initdb.d"
#: Environment variables whose values are secrets, or carry one.
SECRET_NAME = re.compile(r"PASSWORD|PASS$|TOKEN|SECRET|KEY|ACCOUNTS|CONNECTION_STRING|AMQP_URL|DATABASE_URL")
#: Azurite's published development account key: a known value is still a key.
AZURITE_DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CONDITIONS = {"service_healthy", "service_completed_successfully", "service_started"}


def one_shots(compose: dict[str, dict[str, Any]]) -> set[str]:
    """Services that run to completion: never restarted, and awaited as completed by a dependant."""
    awaited = {
        name
        for service in compose.values()
        for name, dependency in (service.get("depends_on") or {}).items()
        if dependency["condition"] == "service_completed_successfully"
    }
    return {name for name in awaited if compose[name].get("restart") == "no"}


def test_every_service_has_a_health_check_or_is_a_one_shot_its_dependants_wait_for() -> None:
    compose = services()
    finished = one_shots(compose)
    for name, service in compose.items():
        if name in finished:
            assert "healthcheck" not in service, name
            continue
        check = service.get("healthcheck")
        assert check, f"{name} has no health check"
        assert not check.get("disable"), name
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert len(check["test"]) > 1, name


def test_every_dependency_waits_on_a_condition_the_dependency_can_meet() -> None:
    compose = services()
    finished = one_shots(compose)
    for name, service in compose.items():
        depends_on = service.get("depends_on") or {}
        assert isinstance(depends_on, dict), f"{name}: depends_on without conditions"
        for dependency, how in depends_on.items():
            assert dependency in compose, f"{name} depends on unknown {dependency}"
            condition = how["condition"]
            assert condition in CONDITIONS, (name, dependency, condition)
            if condition == "service_healthy":
                assert "healthcheck" in compose[dependency], (name, dependency)
            if condition == "service_completed_successfully":
                assert dependency in finished, (name, dependency)
            if condition == "service_started":
                # Only a one-shot that waits for the service itself may start on its heels.
                assert name in finished, (name, dependency)
                assert "--wait" in service["command"], (name, dependency)


def test_the_five_services_run_from_one_image_with_the_platform_healthy_first() -> None:
    compose = services()
    served = Counter()
    for name, service in compose.items():
        command = service.get("command") or []
        if command[:1] != ["serve"]:
            continue
        served[command[1]] += 1
        assert service["image"] == "adxflow:dev", name
        assert service["build"]["dockerfile"] == "deploy/Dockerfile", name
        assert "entrypoint" not in service, name
        assert service["healthcheck"]["test"] == ["CMD", "adxflow", "healthcheck", command[1]], name
        for platform in ("rabbitmq", "postgres", "azurite"):
            assert service["depends_on"][platform] == {"condition": "service_healthy"}, (name, platform)
    assert set(served) == set(SERVICES)
    assert served["trigger"] == 2, "two trigger replicas: each schedule slot fires once"
    query_worker = next(s for s in compose.values() if s.get("command") == ["serve", "query_worker"])
    assert query_worker["depends_on"]["kusto-seed"] == {"condition": "service_completed_successfully"}
    notifier = next(s for s in compose.values() if s.get("command") == ["serve", "notifier"])
    assert notifier["depends_on"]["mailpit"] == {"condition": "service_healthy"}


def test_no_two_services_publish_the_same_host_port() -> None:
    published = [
        port.rsplit(":", 2)[-2] for service in services().values() for port in service.get("ports", [])
    ]
    assert len(published) == len(set(published)), published
    # Everything published listens on loopback only.
    for service in services().values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port


def test_the_kusto_emulator_runs_only_once_its_licence_is_accepted_explicitly() -> None:
    kusto = services()["kusto"]
    assert kusto["image"] == "mcr.microsoft.com/azuredataexplorer/kustainer-linux"
    accept = kusto["environment"]["ACCEPT_EULA"]
    assert re.fullmatch(r"\$\{ADX_ACCEPT_EULA:\?[^}]+\}", accept), accept
    with pytest.raises(MissingVariable, match="ADX_ACCEPT_EULA"):
        interpolate(accept, {})
    with pytest.raises(MissingVariable, match="ADX_ACCEPT_EULA"):
        interpolate(accept, {"ADX_ACCEPT_EULA": ""})
    assert interpolate(accept, {"ADX_ACCEPT_EULA": "Y"}) == "Y"
    # .env.example leaves the choice to whoever reads the licence.
    assert example_env()["ADX_ACCEPT_EULA"] == ""


def _secret_parts(key: str, value: str) -> list[str]:
    """What is secret in *value*: a connection string's key, a URL's password, an account's key, or all."""
    if "AccountKey=" in value:
        return [part.split("=", 1)[1] for part in value.split(";") if part.startswith("AccountKey=")]
    if "://" in value:
        userinfo = value.split("://", 1)[1].rpartition("@")[0]
        return [userinfo.partition(":")[2]] if userinfo else []
    if key == "AZURITE_ACCOUNTS":
        return [account.partition(":")[2] for account in value.split(";")]
    return [value]


def test_no_secret_is_written_in_the_compose_file() -> None:
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    assert AZURITE_DEV_KEY not in text
    checked = set()
    for name, service in services().items():
        for key, value in (service.get("environment") or {}).items():
            if not SECRET_NAME.search(key) and "AccountKey=" not in str(value):
                continue
            for part in _secret_parts(key, str(value)):
                reference = REFERENCE.fullmatch(part)
                assert reference, f"{name}: {key} holds a literal secret {part!r}"
                assert reference["op"] in (":?", "?"), f"{name}: {key} falls back to a default"
                checked.add(key)
    assert {
        "ADXFLOW_AMQP_URL",
        "ADXFLOW_DATABASE_URL",
        "ADXFLOW_AZURE_STORAGE_CONNECTION_STRING",
        "ADXFLOW_API_TOKEN",
        "RABBITMQ_DEFAULT_PASS",
        "POSTGRES_PASSWORD",
        "AZURITE_ACCOUNTS",
    } <= checked


def _references(node: Any) -> list[re.Match[str]]:
    if isinstance(node, dict):
        return [match for value in node.values() for match in _references(value)]
    if isinstance(node, list):
        return [match for value in node for match in _references(value)]
    return list(REFERENCE.finditer(node)) if isinstance(node, str) else []


def test_env_example_names_every_required_variable_with_a_placeholder_only() -> None:
    required = {match["name"] for match in _references(load()) if match["op"] in (":?", "?")}
    example = example_env()
    assert required <= set(example), required - set(example)
    for name in required - {"ADX_ACCEPT_EULA"}:
        assert example[name] == "change-me", name


def test_the_local_connection_points_at_the_emulator_the_seed_fills() -> None:
    compose = services()
    trigger = compose["trigger"]
    connections_path = trigger["environment"]["ADXFLOW_CONNECTIONS_FILE"]
    connections = Connections.from_file(host_path(trigger, connections_path))
    local = connections.get("local")
    assert isinstance(local, NoAuth)
    # auth none is only for plain http, so the emulator is reached inside the compose network.
    assert urlsplit(local.cluster).hostname == "kusto"
    assert "kusto" in compose
    seed = compose["kusto-seed"]["command"]
    assert seed[seed.index("--cluster") + 1] == local.cluster
    assert seed[seed.index("--database") + 1] == "Samples"


def test_the_reports_database_is_made_on_the_stacks_postgres_and_its_password_reaches_the_workers() -> None:
    compose = services()
    worker = compose["query-worker"]
    connections = Connections.from_file(host_path(worker, worker["environment"]["ADXFLOW_CONNECTIONS_FILE"]))
    reports = connections.database("reports")
    url = make_url(reports.url or "")
    assert (url.host, url.database, url.username) == ("postgres", "reports", "adxflow")
    assert reports.password is not None
    reference = reports.password.env
    assert reference is not None
    assert REFERENCE.fullmatch(worker["environment"][reference])["name"] == "POSTGRES_PASSWORD"
    made = "\n".join(path.read_text() for path in host_path(compose["postgres"], INIT).glob("*.sql"))
    assert re.search(r"CREATE DATABASE reports OWNER adxflow;", made), made
    assert reports.allows("storm_daily_summary"), "the table examples/daily-summary-to-postgres.yaml writes"


def test_the_compose_file_parses_with_anchors_resolved() -> None:
    compose = load()
    assert set(compose) >= {"services", "volumes"}
    for name, service in compose["services"].items():
        assert "image" in service, name


def test_the_image_builds_in_one_stage_and_runs_without_compilers_as_a_user() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert len(stages) == 2
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in text
    build, final = stages
    assert "build-essential" in build
    assert "build-essential" not in final
    # adxflow alone: the 'embedded' extra is for embedded mode, which the image never runs.
    assert re.search(
        r"/opt/adxflow/bin/pip install --constraint requirements\.lock \.$", build, flags=re.MULTILINE
    )
    assert re.search(r"^COPY .*\brequirements\.lock\b", build, flags=re.MULTILINE)
    assert "[embedded]" not in text
    assert "COPY --from=build /opt/adxflow /opt/adxflow" in final
    for package in ("libcairo2", "fonts-dejavu-core"):
        assert package in final
    assert re.search(r"^USER 10001", final, flags=re.MULTILINE)
    assert re.search(r'^HEALTHCHECK .* CMD \["adxflow", "healthcheck"\]$', final, flags=re.MULTILINE)
    assert 'ENTRYPOINT ["adxflow"]' in final
    assert 'CMD ["serve", "trigger"]' in final
    # What the build copies is all the image needs; the rest stays out of its context.
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for path in (".git", ".venv", ".env", "tests"):
        assert path in ignored
