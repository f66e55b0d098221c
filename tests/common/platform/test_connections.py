"""Connections: only what the operator configured, secrets only by reference."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from azure.kusto.data import KustoConnectionStringBuilder

from common.contracts.errors import ConfigurationError, UnknownConnection
from common.platform.connections import AppKey, Connections, NoAuth, connection_string


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "connections.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_auth_method_parses(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
connections:
  local: {cluster: "http://127.0.0.1:31415", auth: none}
  sp:
    cluster: https://c1.westeurope.kusto.windows.net
    auth: app_key
    client_id: app
    tenant_id: tenant
    client_secret: {env: ADX_SP_SECRET}
  cert:
    cluster: https://c2.kusto.windows.net
    auth: app_certificate
    client_id: app
    tenant_id: tenant
    certificate_path: /run/secrets/adx.pem
  mi: {cluster: "https://c3.kusto.windows.net", auth: managed_identity, client_id: abc}
  wi: {cluster: "https://c4.kusto.windows.net", auth: workload_identity}
  cli: {cluster: "https://c5.kusto.windows.net", auth: az_cli}
  device: {cluster: "https://c6.kusto.windows.net", auth: device_code}
""",
    )
    connections = Connections.from_file(path)
    assert connections.names() == ["cert", "cli", "device", "local", "mi", "sp", "wi"]
    assert isinstance(connections.get("local"), NoAuth)
    sp = connections.get("sp")
    assert isinstance(sp, AppKey)
    assert sp.client_secret.env == "ADX_SP_SECRET"


def test_an_unknown_connection_names_the_known_ones() -> None:
    connections = Connections()
    connections.add_local("local", "http://127.0.0.1:31415")
    with pytest.raises(UnknownConnection, match=r"'prod' is not configured \(known: local\)"):
        connections.get("prod")


def test_an_inline_secret_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
connections:
  sp:
    cluster: https://c1.kusto.windows.net
    auth: app_key
    client_id: app
    tenant_id: tenant
    client_secret: hunter2
""",
    )
    with pytest.raises(ConfigurationError, match=r"sp\.app_key\.client_secret") as raised:
        Connections.from_file(path)
    assert "hunter2" not in str(raised.value)


def test_tokens_are_never_sent_over_plain_http(tmp_path: Path) -> None:
    path = write(
        tmp_path, "connections:\n  mi: {cluster: 'http://c.kusto.windows.net', auth: managed_identity}\n"
    )
    with pytest.raises(ConfigurationError, match="must use https"):
        Connections.from_file(path)


def test_a_cluster_url_with_a_path_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path, "connections:\n  x: {cluster: 'https://c.kusto.windows.net/evil?x=1', auth: az_cli}\n"
    )
    with pytest.raises(ConfigurationError, match="bare cluster URL"):
        Connections.from_file(path)


def test_the_local_endpoint_must_be_loopback() -> None:
    with pytest.raises(ConfigurationError, match="loopback"):
        Connections().add_local("local", "http://10.1.2.3:31415")


def test_the_secret_is_read_from_the_environment_only_when_a_client_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = AppKey(
        cluster="https://c1.kusto.windows.net",
        auth="app_key",
        client_id="app",
        tenant_id="tenant",
        client_secret={"env": "ADX_TEST_SECRET"},  # type: ignore[arg-type]
    )
    monkeypatch.delenv("ADX_TEST_SECRET", raising=False)
    with pytest.raises(ConfigurationError, match="ADX_TEST_SECRET is not set"):
        connection_string(config)
    monkeypatch.setenv("ADX_TEST_SECRET", "s3cr3t-value")
    kcsb = connection_string(config)
    assert isinstance(kcsb, KustoConnectionStringBuilder)
    assert "s3cr3t-value" not in repr(config)


def test_a_missing_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="ADXFLOW_CONNECTIONS_FILE"):
        Connections.from_file(tmp_path / "absent.yaml")


def test_mute_windows_are_read_from_the_file_by_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
mute_windows:
  - name: nights
    timezone: Europe/Berlin
    times: ["22:00-24:00", "00:00-07:00"]
  - name: christmas
    dates: ["2026-12-24..2026-12-26"]
    at_end: drop
""",
    )
    windows = Connections.from_file(path).mute_windows
    assert sorted(windows) == ["christmas", "nights"]
    assert windows["nights"].mutes(dt.datetime(2026, 3, 2, 22, 30, tzinfo=dt.UTC))
    assert not windows["nights"].mutes(dt.datetime(2026, 3, 2, 12, 0, tzinfo=dt.UTC))
    assert windows["christmas"].at_end == "drop"


def test_two_mute_windows_of_one_name_or_a_bad_window_are_refused_naming_it(tmp_path: Path) -> None:
    twice = write(
        tmp_path,
        "mute_windows:\n  - {name: nights, times: ['00:00-06:00']}\n  - {name: nights, weekdays: [sun]}\n",
    )
    with pytest.raises(ConfigurationError, match="more than one mute window is named 'nights'"):
        Connections.from_file(twice)
    bad = write(
        tmp_path, "mute_windows:\n  - {name: nights, timezone: Mars/Olympus, times: ['00:00-06:00']}\n"
    )
    with pytest.raises(ConfigurationError, match=r"mute_windows\.0\.timezone"):
        Connections.from_file(bad)


DATABASES = """
databases:
  reporting:
    url: postgresql+asyncpg://adxflow@db.internal:5432/reporting
    password: {env: REPORTING_DB_PASSWORD}
    tables: ["reports.*", "daily_summary"]
    max_rows: 1000
  warehouse:
    url_secret: {file: SECRET_FILE}
    tables: ["*"]
"""


def test_database_connections_resolve_their_secrets_only_when_connecting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "warehouse-url"
    secret.write_text("mysql+asyncmy://etl:s3cret-url@mariadb.internal/warehouse\n", encoding="utf-8")
    connections = Connections.from_file(write(tmp_path, DATABASES.replace("SECRET_FILE", str(secret))))
    reporting = connections.database("reporting")
    assert reporting.allows("reports.daily")
    assert reporting.allows("daily_summary")
    assert not reporting.allows("public.users")
    assert not reporting.allows("daily_summary_x")
    assert reporting.max_rows == 1000
    with pytest.raises(ConfigurationError, match=r"databases\.reporting\.password: environment variable"):
        reporting.engine_url("reporting")
    monkeypatch.setenv("REPORTING_DB_PASSWORD", "s3cret-pw")
    url = reporting.engine_url("reporting")
    assert url.password == "s3cret-pw"
    assert "s3cret-pw" not in repr(url)
    assert "s3cret-pw" not in repr(reporting)
    warehouse = connections.database("warehouse")
    assert warehouse.engine_url("warehouse").password == "s3cret-url"
    assert "s3cret-url" not in repr(warehouse)
    assert "s3cret-url" not in str(warehouse)


def test_an_unknown_database_names_the_known_ones(tmp_path: Path) -> None:
    connections = Connections.from_file(write(tmp_path, DATABASES.replace("SECRET_FILE", "/x")))
    with pytest.raises(
        UnknownConnection, match=r"database 'prod' is not configured \(known: reporting, warehouse\)"
    ):
        connections.database("prod")


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("url: postgresql+asyncpg://u:pw@h/db", "must not carry a password"),
        ("url: postgresql://u@h/db", "driver 'postgresql' is not one of"),
        (
            "url_secret: {env: X}\n    url: postgresql+asyncpg://u@h/db",
            "exactly one of 'url' or 'url_secret'",
        ),
        ("url: postgresql+asyncpg://u@h/db\n    tables: []", "tables"),
    ],
)
def test_a_bad_database_names_the_field(tmp_path: Path, entry: str, problem: str) -> None:
    text = f"databases:\n  db:\n    {entry}\n" + ("" if "tables" in entry else "    tables: [t]\n")
    with pytest.raises(ConfigurationError, match=problem) as refused:
        Connections.from_file(write(tmp_path, text))
    assert "databases.db" in refused.value.message
    assert "pw@" not in refused.value.message
