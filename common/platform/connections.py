"""Kusto connections, configured by the operator and named by jobs.

A job says ``connection: prod``; it never carries a cluster URL or a
credential. The operator's YAML file (``ADXFLOW_CONNECTIONS_FILE``) maps names
to a cluster and an auth method; secrets appear there only as references (an
environment variable or a mounted file), resolved by the query-worker when it
builds a client. Since a job can only name a configured connection, no job can
make the worker send a token to a host the operator did not list.

.. code-block:: yaml

    connections:
      prod:
        cluster: https://mycluster.westeurope.kusto.windows.net
        auth: app_key
        client_id: 00000000-0000-0000-0000-000000000000
        tenant_id: 11111111-1111-1111-1111-111111111111
        client_secret: {env: ADX_PROD_CLIENT_SECRET}

    databases:
      reporting:
        url: postgresql+asyncpg://adxflow@db.internal:5432/reporting
        password: {file: /run/secrets/reporting-password}
        tables: ["reports.*", "daily_summary"]
        max_rows: 1000000
        max_bytes: 268435456

Database connections are the targets of copies (`common.platform.sql`): a
SQLAlchemy async URL without its password plus the password by reference, or
the whole URL by reference (``url_secret``); the tables a flow may write, as
globs over ``schema.table`` (or ``table``); and optional caps per copy.
"""

from __future__ import annotations

import os
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from azure.kusto.data import KustoConnectionStringBuilder
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from common.contracts.errors import ConfigurationError, UnknownConnection
from common.contracts.mute_windows import MuteWindow
from common.platform.config import is_loopback


class SecretRef(BaseModel):
    """Where a secret lives: an environment variable or a file, never inline."""

    model_config = ConfigDict(extra="forbid")

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret reference names exactly one of 'env' or 'file'")
        return self

    def resolve(self, field: str) -> str:
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ConfigurationError(f"{field}: environment variable {self.env} is not set")
            return value
        assert self.file is not None
        try:
            return self.file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigurationError(
                f"{field}: cannot read secret file {self.file}: {exc.strerror}"
            ) from None

    def __repr__(self) -> str:
        return f"SecretRef(env={self.env!r})" if self.env else f"SecretRef(file={str(self.file)!r})"


class _Connection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cluster: str
    #: Where reports link a query for people to open it: the Azure Data Explorer web UI's deep
    #: links under this base. By default the cluster's own URL, which serves them (an ``http://``
    #: endpoint serves none, and gets no link unless this is set).
    ui_url: str | None = None
    #: Whether reports link queries at all.
    query_links: bool = True

    @field_validator("ui_url")
    @classmethod
    def _ui_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.username or parts.query:
            raise ValueError(f"ui_url must be an http(s) URL without credentials or query, got {value!r}")
        return value.rstrip("/")

    @property
    def ui_base(self) -> str | None:
        """The base of this cluster's query links; None when reports link no query."""
        if not self.query_links:
            return None
        if self.ui_url is not None:
            return self.ui_url
        return self.cluster if urlsplit(self.cluster).scheme == "https" else None

    @field_validator("cluster")
    @classmethod
    def _cluster_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"cluster must be an http(s) URL, got {value!r}")
        if parts.path not in ("", "/") or parts.query or parts.username:
            raise ValueError(f"cluster must be a bare cluster URL without path or credentials, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _tokens_only_over_tls(self) -> _Connection:
        auth = getattr(self, "auth", "none")
        if auth != "none" and urlsplit(self.cluster).scheme != "https":
            raise ValueError(f"auth {auth!r} sends tokens; the cluster URL must use https")
        return self

    @property
    def host(self) -> str:
        return urlsplit(self.cluster).hostname or ""


class NoAuth(_Connection):
    """A local endpoint (the embedded one, or an emulator) that takes no token."""

    auth: Literal["none"]

    @model_validator(mode="after")
    def _local_only(self) -> NoAuth:
        if urlsplit(self.cluster).scheme != "http":
            raise ValueError("auth 'none' is for a local http:// endpoint")
        return self


class AppKey(_Connection):
    """A service principal with a client secret (the seed's "Connect with Service Principal")."""

    auth: Literal["app_key"]
    client_id: str
    tenant_id: str
    client_secret: SecretRef


class AppCertificate(_Connection):
    auth: Literal["app_certificate"]
    client_id: str
    tenant_id: str
    certificate_path: Path
    certificate_password: SecretRef | None = None


class ManagedIdentity(_Connection):
    auth: Literal["managed_identity"]
    client_id: str | None = None


class WorkloadIdentity(_Connection):
    """Azure Workload Identity on Kubernetes; the federated token file comes from the pod."""

    auth: Literal["workload_identity"]
    client_id: str | None = None
    tenant_id: str | None = None


class AzCli(_Connection):
    auth: Literal["az_cli"]


class DeviceCode(_Connection):
    auth: Literal["device_code"]
    tenant_id: str = "organizations"


ConnectionConfig = Annotated[
    NoAuth | AppKey | AppCertificate | ManagedIdentity | WorkloadIdentity | AzCli | DeviceCode,
    Field(discriminator="auth"),
]


class WebhookConfig(BaseModel):
    """A webhook target the operator configured; flows name it, secrets stay here."""

    model_config = ConfigDict(extra="forbid")

    url: str
    headers: dict[str, SecretRef] = {}

    def resolved_headers(self, name: str) -> dict[str, str]:
        return {
            header: ref.resolve(f"webhooks.{name}.headers.{header}") for header, ref in self.headers.items()
        }


#: The async SQLAlchemy drivers a database connection may name. PostgreSQL (asyncpg) and MariaDB or
#: MySQL (asyncmy) are tested; SQL Server (aioodbc, installed by the operator) is not.
DATABASE_DRIVERS = frozenset({"postgresql+asyncpg", "mysql+asyncmy", "mariadb+asyncmy", "mssql+aioodbc"})


def _database_url(value: str, field: str) -> URL:
    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError(f"{field} is not a SQLAlchemy URL") from None
    if url.drivername not in DATABASE_DRIVERS:
        raise ValueError(
            f"{field}: driver {url.drivername!r} is not one of {', '.join(sorted(DATABASE_DRIVERS))}"
        )
    return url


class DatabaseConfig(BaseModel):
    """A database flows may copy results into or ingest from; flows name it, its secret stays here."""

    model_config = ConfigDict(extra="forbid")

    #: A SQLAlchemy async URL without a password (``postgresql+asyncpg://user@host/db``).
    url: str | None = None
    password: SecretRef | None = None
    #: The whole URL, password and all, by reference, instead of ``url`` and ``password``.
    url_secret: SecretRef | None = None
    #: Globs over ``schema.table`` (or a bare ``table``) naming the tables flows may write.
    tables: list[str] = []
    #: Whether flows may run queries on it and ingest their rows into Kusto (``ingest_to_kusto``).
    reads: bool = False
    #: The most rows, and the most bytes of the rows' JSON, one copy (or ingestion) may move.
    max_rows: int | None = Field(default=None, gt=0)
    max_bytes: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_url(self) -> DatabaseConfig:
        if (self.url is None) == (self.url_secret is None):
            raise ValueError("a database names exactly one of 'url' or 'url_secret'")
        if self.url_secret is not None and self.password is not None:
            raise ValueError("'password' goes with 'url'; a 'url_secret' carries its own")
        if self.url is not None and _database_url(self.url, "url").password is not None:
            raise ValueError("url must not carry a password: give it as 'password' by reference")
        if not self.tables and not self.reads:
            raise ValueError(
                "a database lets flows write 'tables' (globs), or read it ('reads: true'), or both"
            )
        return self

    def allows(self, table: str) -> bool:
        """Whether flows may write *table* (``schema.table`` or ``table``)."""
        return any(fnmatchcase(table, pattern) for pattern in self.tables)

    def engine_url(self, name: str) -> URL:
        """The URL to connect with, its secrets resolved now (SQLAlchemy masks the password in its repr)."""
        if self.url_secret is not None:
            field = f"databases.{name}.url_secret"
            try:
                return _database_url(self.url_secret.resolve(field), field)
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from None
        assert self.url is not None
        url = make_url(self.url)
        if self.password is not None:
            url = url.set(password=self.password.resolve(f"databases.{name}.password"))
        return url

    def __repr__(self) -> str:
        where = self.url if self.url is not None else repr(self.url_secret)
        return f"DatabaseConfig({where}, tables={self.tables!r}, reads={self.reads!r})"

    __str__ = __repr__


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connections: dict[str, ConnectionConfig] = {}
    webhooks: dict[str, WebhookConfig] = {}
    databases: dict[str, DatabaseConfig] = {}
    #: Named mute windows alerts may refer to.
    mute_windows: list[MuteWindow] = []

    @field_validator("mute_windows")
    @classmethod
    def _distinct_windows(cls, windows: list[MuteWindow]) -> list[MuteWindow]:
        names = [window.name for window in windows]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"more than one mute window is named {', '.join(map(repr, twice))}")
        return windows


def connection_string(config: ConnectionConfig, *, blocking: bool = False) -> KustoConnectionStringBuilder:
    """The azure-kusto-data builder for *config*, resolving secrets now.

    Its credential is azure-identity's async one, as the async client takes; *blocking* gives the
    blocking one instead, for azure-kusto-ingest's clients, which have no async form.
    """
    import azure.identity
    from azure.identity import aio

    identity: Any = azure.identity if blocking else aio

    cluster = config.cluster
    credential: Any
    match config:
        case NoAuth():
            return KustoConnectionStringBuilder.with_no_authentication(cluster)
        case AppKey():
            credential = identity.ClientSecretCredential(
                config.tenant_id, config.client_id, config.client_secret.resolve("client_secret")
            )
        case AppCertificate():
            password = (
                config.certificate_password.resolve("certificate_password")
                if config.certificate_password
                else None
            )
            credential = identity.CertificateCredential(
                config.tenant_id, config.client_id, str(config.certificate_path), password=password
            )
        case ManagedIdentity():
            credential = identity.ManagedIdentityCredential(client_id=config.client_id)
        case WorkloadIdentity():
            credential = identity.WorkloadIdentityCredential(
                client_id=config.client_id, tenant_id=config.tenant_id
            )
        case AzCli():
            credential = identity.AzureCliCredential()
        case DeviceCode():
            # azure-identity has no async device-code credential; the client's own flow is used.
            return KustoConnectionStringBuilder.with_aad_device_authentication(cluster, config.tenant_id)
    return KustoConnectionStringBuilder.with_azure_token_credential(cluster, credential=credential)


class Connections:
    """The configured connections: the only clusters adxflow will ever reach."""

    def __init__(
        self,
        configs: dict[str, ConnectionConfig] | None = None,
        webhooks: dict[str, WebhookConfig] | None = None,
        mute_windows: list[MuteWindow] | None = None,
        databases: dict[str, DatabaseConfig] | None = None,
    ) -> None:
        self._configs: dict[str, ConnectionConfig] = dict(configs or {})
        #: Webhook targets flows may name (``post_webhook: {webhook: NAME}``).
        self.webhooks: dict[str, WebhookConfig] = dict(webhooks or {})
        #: Mute windows alerts may name (``alert: {mute_windows: [NAME]}``).
        self.mute_windows: dict[str, MuteWindow] = {window.name: window for window in mute_windows or []}
        #: Databases copies may write into (``copy_to_database: {database: NAME}``).
        self.databases: dict[str, DatabaseConfig] = dict(databases or {})
        #: Embedded mode's webhook outbox: where a name the operator did not configure posts to.
        self.webhook_sink: str | None = None

    @classmethod
    def from_file(cls, path: Path) -> Connections:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigurationError(f"ADXFLOW_CONNECTIONS_FILE={str(path)!r}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigurationError(
                f"ADXFLOW_CONNECTIONS_FILE={str(path)!r}: not valid YAML: {exc}"
            ) from None
        try:
            parsed = _File.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
            )
            raise ConfigurationError(f"connections file {path}: {problems}") from None
        return cls(parsed.connections, parsed.webhooks, parsed.mute_windows, parsed.databases)

    def add_local(self, name: str, url: str) -> None:
        """Register the embedded endpoint; refuses anything that is not loopback."""
        host = urlsplit(url).hostname or ""
        if not is_loopback(host):
            raise ConfigurationError(f"local connection {name!r} must be on loopback, got {url!r}")
        self._configs[name] = NoAuth(cluster=url, auth="none")

    def add_webhook_sink(self, url: str) -> None:
        """Post to the embedded webhook outbox at *url* (``<url>/<name>``) for any name not configured;
        refuses anything that is not loopback."""
        host = urlsplit(url).hostname or ""
        if not is_loopback(host):
            raise ConfigurationError(f"the webhook outbox must be on loopback, got {url!r}")
        self.webhook_sink = url.rstrip("/")

    def names(self) -> list[str]:
        return sorted(self._configs)

    def __contains__(self, name: object) -> bool:
        return name in self._configs

    def get(self, name: str) -> ConnectionConfig:
        try:
            return self._configs[name]
        except KeyError:
            known = ", ".join(self.names()) or "none are configured"
            raise UnknownConnection(f"connection {name!r} is not configured (known: {known})") from None

    def database(self, name: str) -> DatabaseConfig:
        try:
            return self.databases[name]
        except KeyError:
            known = ", ".join(sorted(self.databases)) or "none are configured"
            raise UnknownConnection(f"database {name!r} is not configured (known: {known})") from None
