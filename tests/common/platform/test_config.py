"""Settings: read once, errors name the variable, secrets masked."""

from __future__ import annotations

import pytest

from common.contracts.errors import ConfigurationError
from common.platform.config import is_loopback, load_settings


def test_a_bad_value_names_the_variable_and_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADXFLOW_PREFETCH", "lots")
    with pytest.raises(ConfigurationError, match=r"ADXFLOW_PREFETCH='lots'"):
        load_settings()


def test_secrets_never_show_in_a_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADXFLOW_AMQP_URL", "amqp://svc:amqp-pa55@rabbit:5672/")
    monkeypatch.setenv("ADXFLOW_SMTP_PASSWORD", "smtp-pa55")
    monkeypatch.setenv("ADXFLOW_API_TOKEN", "tok-pa55")
    settings = load_settings()
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    for secret in ("amqp-pa55", "smtp-pa55", "tok-pa55"):
        assert secret not in shown
    assert settings.smtp_password is not None
    assert settings.smtp_password.get_secret_value() == "smtp-pa55"


def test_embedded_defaults_live_under_the_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADXFLOW_DATA_DIR", "/srv/adxflow")
    settings = load_settings()
    assert settings.amqp_url is None
    assert settings.resolved_database_url == "sqlite+aiosqlite:////srv/adxflow/history.db"
    assert str(settings.resolved_blob_dir) == "/srv/adxflow/blobs"
    assert settings.history_url() == "http://127.0.0.1:8081"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("10.0.0.5", False),
        ("example.com", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_test_recipients_are_addresses_or_domains_comma_separated_or_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().test_recipients == []
    assert not load_settings().allows_test_recipient("qa@example.com")
    monkeypatch.setenv("ADXFLOW_TEST_RECIPIENTS", "QA@example.com, *@test.example.org")
    settings = load_settings()
    assert settings.test_recipients == ["qa@example.com", "*@test.example.org"]
    assert settings.allows_test_recipient("qa@Example.com")
    assert settings.allows_test_recipient("anyone@test.example.org")
    assert not settings.allows_test_recipient("other@example.com")
    assert not settings.allows_test_recipient("anyone@sub.test.example.org")
    monkeypatch.setenv("ADXFLOW_TEST_RECIPIENTS", '["qa@example.com"]')
    assert load_settings().test_recipients == ["qa@example.com"]
    monkeypatch.setenv("ADXFLOW_TEST_RECIPIENTS", "qa*@example.com")
    with pytest.raises(
        ConfigurationError, match=r"ADXFLOW_TEST_RECIPIENTS=.*neither an address nor \*@domain"
    ):
        load_settings()
