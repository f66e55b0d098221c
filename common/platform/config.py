"""Settings, read once from ``ADXFLOW_*`` environment variables.

Secrets (the AMQP URL's password, SMTP password, API token) are
``SecretStr``: they print as ``**********`` in every repr and log line, and
live only in the environment (or a mounted file) of the service that uses them.
"""

from __future__ import annotations

import ipaddress
import json
import string
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from common.contracts.errors import ConfigurationError

Port = Annotated[int, Field(ge=0, le=65535)]


def _trace_url_template(value: str | None) -> str | None:
    """An http(s) URL whose only placeholder is ``{trace_id}``."""
    if value is None or not value.strip():
        return None
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
    except ValueError as exc:
        raise ValueError(f"not a URL template: {exc}") from None
    if fields != ["trace_id"]:
        raise ValueError("must hold the placeholder {trace_id} exactly once, and no other")
    example = value.format(trace_id="0" * 32)
    parts = urlsplit(example)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ADXFLOW_", extra="ignore")

    data_dir: Path = Path(".adxflow")
    namespace: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "adxflow"

    amqp_url: SecretStr | None = None
    prefetch: Annotated[int, Field(ge=1, le=1000)] = 8
    #: How long a publish waits for a lost broker connection to come back before it fails.
    broker_reconnect_seconds: Annotated[float, Field(ge=0, le=600)] = 30.0

    database_url: SecretStr | None = None
    #: How long history waits for an unreachable database before it hands an event back.
    database_outage_seconds: Annotated[float, Field(ge=0, le=3600)] = 60.0
    #: ``auto``: a service migrates the database's schema as it starts (under a lock, so replicas
    #: wait for one another); ``check``: it refuses to start unless ``adxflow migrate`` has run.
    migrate: Literal["auto", "check"] = "auto"
    blob_dir: Path | None = None
    #: ``folder`` keeps blobs under ``blob_dir`` (one machine); ``azure`` in Azure Blob Storage.
    blob_backend: Literal["folder", "azure"] = "folder"
    #: Development and Azurite; in Azure, prefer the account URL with an identity.
    azure_storage_connection_string: SecretStr | None = None
    #: ``https://<account>.blob.core.windows.net``, used with ``azure_storage_credential``.
    azure_storage_account_url: str | None = None
    azure_storage_container: Annotated[
        str, Field(min_length=3, max_length=63, pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")
    ] = "adxflow"
    azure_storage_credential: Literal["default", "managed_identity", "workload_identity"] = "default"
    connections_file: Path | None = None

    local_kusto_port: Port = 0

    smtp_host: str = "127.0.0.1"
    smtp_port: Port = 8025
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_timeout: Annotated[float, Field(gt=0)] = 30.0
    mail_from: str = "adxflow <adxflow@localhost>"
    #: Embedded mode runs its own SMTP server writing to the outbox folder;
    #: turn it off to send through the SMTP relay configured above instead.
    embedded_smtp: bool = True
    outbox_dir: Path | None = None
    #: Largest email, in bytes of the whole MIME message. Over it, attachments are zipped, then
    #: replaced by links to the run's artifacts in the history service (and the email says so).
    email_max_bytes: Annotated[int, Field(ge=64 * 1024)] = 10 * 1024 * 1024
    #: Domains a flow may send email to (``example.com`` also admits ``sub.example.com``);
    #: empty admits every domain. A flow naming another recipient is refused when saved.
    email_allowed_domains: list[str] = []
    #: Addresses a test run may send its emails to ("send a test"): each an address or
    #: ``*@domain``; comma-separated (or a JSON list). Empty refuses every test send.
    test_recipients: Annotated[list[str], NoDecode] = []
    #: Hosts a flow may post webhooks to by URL (``*.example.com`` allowed); named
    #: webhooks from the connections file are always allowed.
    webhook_allowed_hosts: list[str] = []
    #: Hosts a flow may ingest files from by URL (``ingest_to_kusto`` with ``from_file.url``;
    #: ``*.example.com`` allowed); empty allows none.
    ingest_allowed_hosts: list[str] = []
    #: The largest file one ingestion downloads (it is kept on disk while its rows are read).
    ingest_file_max_bytes: Annotated[int, Field(gt=0)] = 1024 * 1024 * 1024
    #: A claimed delivery whose worker has not renewed its claim for this long is taken over by
    #: another worker. A live worker renews every third of it while the delivery is under way, so
    #: it can be short: a worker that died is replaced within seconds.
    delivery_lease_seconds: Annotated[float, Field(gt=0, le=3600)] = 10.0
    #: Most deliveries one per-row step makes (``for_each``), whatever the flow asks.
    max_deliveries: Annotated[int, Field(ge=1, le=100_000)] = 1000
    #: Most iterations of one ``for_each`` step running at once, and most rows it iterates: a
    #: flow asking for more is refused when it is saved.
    scope_max_concurrency: Annotated[int, Field(ge=1, le=10_000)] = 50
    scope_max_items: Annotated[int, Field(ge=1, le=100_000)] = 100_000

    trigger_host: str = "127.0.0.1"
    trigger_port: Port = 8080
    history_host: str = "127.0.0.1"
    history_port: Port = 8081
    history_public_url: str | None = None
    #: Where the history service reaches the trigger API; by default from the trigger's host and port.
    trigger_public_url: str | None = None
    #: A trace UI's page of one trace, ``{trace_id}`` where its id goes: the run page links to it.
    trace_url_template: Annotated[str | None, AfterValidator(_trace_url_template)] = None
    api_token: SecretStr | None = None
    #: Where a worker service (query_worker, render, notifier) run alone serves /healthz, /readyz
    #: and /metrics. Loopback by default; a container sets 0.0.0.0 for its probes and scraper.
    health_host: str = "127.0.0.1"
    health_port: Port = 8090

    #: The shortest interval a flow's schedule may have.
    minimum_schedule_seconds: Annotated[float, Field(ge=1)] = 60
    scheduler_poll_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0

    #: Transient failures (throttling, 5xx, network, SMTP 4xx) are tried this many times in all.
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 6
    #: The same for delivery steps (email, webhook): more, so that the attempts span longer than
    #: a relay's restart or failover (from the 2 s base, 127 s at least and 254 s at most).
    delivery_max_attempts: Annotated[int, Field(ge=1, le=20)] = 8
    retry_base_seconds: Annotated[float, Field(gt=0, le=3600)] = 2.0
    retry_max_seconds: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    #: A step reports that it is running once it has run this long; a quicker one reports only
    #: how it ended (with its start time), which spares history and the broker an event a step.
    report_running_after_seconds: Annotated[float, Field(ge=0, le=3600)] = 1.0
    #: A step running this long reports that it is still alive, this often.
    heartbeat_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    #: A run with no news for its longest step timeout plus this long is failed as Stalled.
    stall_grace_seconds: Annotated[float, Field(gt=0)] = 300.0
    #: Runs (with their steps, dead letters and artifacts) older than this are deleted.
    retention_days: Annotated[int, Field(ge=1, le=3650)] = 28
    #: Test runs (with their steps and artifacts) older than this are deleted.
    dry_run_retention_hours: Annotated[float, Field(gt=0, le=87_600)] = 48.0
    #: How often history looks for runs past their retention.
    retention_interval_seconds: Annotated[float, Field(gt=0, le=86_400)] = 3600.0
    #: On SIGTERM, how long in-flight steps may take to finish before the rest goes back to the queue.
    shutdown_grace_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0

    query_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 420.0
    #: Operators the connector refuses that this server lets flows use anyway.
    allowed_operators: list[Literal["fork", "facet", "evaluate"]] = []
    #: The longest timeout a flow step may ask for.
    query_timeout_max_seconds: Annotated[float, Field(gt=0, le=86_400)] = 3600.0
    #: Result caps, enforced while a result is read: a step's own ``max_rows`` / ``max_bytes``
    #: replace the defaults, up to the maxima. Bytes are those of each row's compact JSON.
    max_result_rows: Annotated[int, Field(gt=0)] = 500_000
    max_result_bytes: Annotated[int, Field(gt=0)] = 64 * 1024 * 1024
    max_result_rows_limit: Annotated[int, Field(gt=0)] = 5_000_000
    max_result_bytes_limit: Annotated[int, Field(gt=0)] = 512 * 1024 * 1024
    table_max_rows: Annotated[int, Field(ge=1, le=100_000)] = 1000
    #: Rows of each query result that templates and conditions can read directly.
    preview_rows: Annotated[int, Field(ge=0, le=1000)] = 50

    log_level: str = "INFO"
    log_format: Annotated[str, Field(pattern="^(json|console)$")] = "json"

    @field_validator("test_recipients", mode="before")
    @classmethod
    def _listed(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("test_recipients")
    @classmethod
    def _recipient_patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            local, at, domain = pattern.partition("@")
            if not at or not local or not domain or "*" in domain or (local != "*" and "*" in local):
                raise ValueError(f"{pattern!r} is neither an address nor *@domain")
        return [pattern.lower() for pattern in value]

    def allows_test_recipient(self, address: str) -> bool:
        """Whether a test run may send its emails to *address* (``test_recipients``)."""
        address = address.strip().lower()
        domain = address.rpartition("@")[2]
        return any(
            pattern == address or (pattern.startswith("*@") and pattern[2:] == domain)
            for pattern in self.test_recipients
        )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite+aiosqlite:///{(self.data_dir / 'history.db').resolve()}"

    @property
    def resolved_blob_dir(self) -> Path:
        return self.blob_dir or self.data_dir / "blobs"

    @property
    def resolved_outbox_dir(self) -> Path:
        return self.outbox_dir or self.data_dir / "outbox"

    def trigger_url(self, port: int | None = None) -> str:
        if self.trigger_public_url:
            return self.trigger_public_url.rstrip("/")
        return f"http://{self.trigger_host}:{port or self.trigger_port}"

    def history_url(self, port: int | None = None) -> str:
        if self.history_public_url:
            return self.history_public_url.rstrip("/")
        return f"http://{self.history_host}:{port or self.history_port}"


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment; a bad value names the variable and the value."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = "ADXFLOW_" + "_".join(str(part) for part in error["loc"]).upper()
            problems.append(f"{key}={error.get('input')!r}: {error['msg']}")
        raise ConfigurationError("invalid configuration: " + "; ".join(problems)) from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
