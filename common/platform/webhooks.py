"""Which webhook targets a flow may post to.

A ``post_webhook`` step names either a target the operator configured
(``webhook: <name>``, which may carry secret headers) or a URL of its own
(``url:``), and a flow-given URL must be on the operator's allowlist. In
embedded mode a name the operator did not configure posts to the webhook
outbox (a folder), as every email goes to the SMTP outbox. The
trigger checks this when a flow is saved, and the notifier again before each
post, so a narrowed allowlist also stops flows saved earlier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from yarl import URL

from common.contracts.errors import ConfigurationError
from common.platform.config import Settings
from common.platform.connections import Connections

#: What a secret looks like in a repr or a message.
MASK = "**********"


class WebhookRefused(ValueError):
    """A step's webhook target is not one the operator allows; the message names the field."""


@dataclass(frozen=True)
class WebhookTarget:
    """Where a post goes. *headers* are secret: no repr, log line or error message shows their values.

    *name* is the operator's name for a configured target; errors then show the name and
    the origin instead of the URL, whose path may itself be a token.
    """

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    name: str | None = None

    def __post_init__(self) -> None:
        # Frozen in fact, not only in name: nobody adds a header to a shared target.
        object.__setattr__(self, "headers", MappingProxyType(dict(self.headers)))

    def __repr__(self) -> str:
        masked = {header: MASK for header in self.headers}
        return f"WebhookTarget(url={public_url(self)!r}, headers={masked!r}, name={self.name!r})"


class WebhookPolicy:
    """Which URLs a flow may post to.

    *allowed_hosts* holds exact host names (``hooks.example.com``) and suffix wildcards
    (``*.example.com``, which matches any subdomain but not ``example.com`` itself). A
    flow-given URL must use https unless its host is also in *allow_http_hosts*. The
    *named* targets are the operator's own and are not held to the allowlist.
    """

    def __init__(
        self,
        *,
        named: Mapping[str, WebhookTarget],
        allowed_hosts: Sequence[str],
        allow_http_hosts: Sequence[str] = ("127.0.0.1", "localhost", "::1"),
        sink: str | None = None,
        allowlist: str = "webhook allowlist",
    ) -> None:
        for name, target in named.items():
            if not _is_http_url(target.url):
                raise ConfigurationError(f"webhook {name!r}: the URL must be an absolute http or https URL")
        self._named = {name: replace(target, name=name) for name, target in named.items()}
        self._exact: set[str] = set()
        self._suffixes: list[str] = []
        for entry in allowed_hosts:
            if entry.startswith("*."):
                self._suffixes.append("." + _normal_host(entry[2:]))
            else:
                self._exact.add(_normal_host(entry))
        self._http = {_normal_host(entry) for entry in allow_http_hosts}
        #: Embedded mode's webhook outbox, which takes the posts to a name not configured.
        self._sink = sink
        #: What refusals call the allowlist (the same rules serve the ingestion's URLs).
        self._allowlist = allowlist

    def resolve(self, *, webhook: str | None, url: str | None, field: str) -> WebhookTarget:
        """The target a step names; *field* is where the step is (``steps[2]``).

        Refusals name the step's ``webhook`` or ``url`` key under *field*.
        """
        if webhook is not None and url is None:
            return self._configured(webhook, f"{field}.webhook")
        if url is not None and webhook is None:
            return self.allowed(url, f"{field}.url")
        raise WebhookRefused(f"{field}: name exactly one of 'webhook' (configured by the operator) or 'url'")

    def _configured(self, name: str, field: str) -> WebhookTarget:
        try:
            return self._named[name]
        except KeyError:
            if self._sink is not None:
                return WebhookTarget(url=f"{self._sink}/{name}", name=name)
            known = ", ".join(repr(known) for known in sorted(self._named)) or "none"
            raise WebhookRefused(
                f"{field}: no webhook named {name!r} is configured (configured: {known})"
            ) from None

    def allowed(self, raw: str, field: str) -> WebhookTarget:
        """*raw* as a target, if the allowlist admits it; WebhookRefused naming *field* otherwise."""
        try:
            url = URL(raw)
        except ValueError as exc:
            raise WebhookRefused(f"{field}: not a valid URL: {exc}") from None
        # post_json parses the same string with the same parser, so the host checked is the host reached.
        if not (url.absolute and url.host and url.scheme in ("http", "https")):
            raise WebhookRefused(f"{field}: {without_secrets(url)!r} is not an absolute http or https URL")
        if url.user is not None or url.password is not None:
            raise WebhookRefused(
                f"{field}: credentials in a URL are refused; ask the operator to configure a named webhook"
            )
        host = _normal_host(url.host)
        if not self._host_allowed(host):
            raise WebhookRefused(f"{field}: host {url.host!r} is not in the operator's {self._allowlist}")
        if url.scheme == "http" and host not in self._http:
            raise WebhookRefused(f"{field}: {without_secrets(url)!r} must use https")
        return WebhookTarget(url=raw)

    def _host_allowed(self, host: str) -> bool:
        return host in self._exact or any(host.endswith(suffix) for suffix in self._suffixes)


def _is_http_url(raw: str) -> bool:
    try:
        url = URL(raw)
    except ValueError:
        return False
    return url.absolute and bool(url.host) and url.scheme in ("http", "https")


def _normal_host(host: str) -> str:
    """Lower case, ASCII (punycode) and without the root's trailing dot, so spellings compare equal."""
    host = host.strip().rstrip(".")
    try:
        return (URL.build(scheme="https", host=host).raw_host or host).lower()
    except ValueError:
        return host.lower()


def without_secrets(url: URL) -> str:
    if url.absolute:
        url = url.with_user(None)
    return str(url.with_query(None).with_fragment(None))


def public_url(target: WebhookTarget) -> str:
    """*target*'s URL without credentials, query or fragment, and without the path if it is configured."""
    try:
        url = URL(target.url)
    except ValueError:
        return "(invalid URL)"
    if target.name is not None and url.absolute:
        return f"{url.origin()}/…"
    return without_secrets(url)


def ingest_policy(settings: Settings) -> WebhookPolicy:
    """Which URLs a flow may ingest files from: the operator's ``ingest_allowed_hosts``."""
    return WebhookPolicy(
        named={}, allowed_hosts=settings.ingest_allowed_hosts, allowlist="ingestion allowlist"
    )


def policy_for(connections: Connections, settings: Settings) -> WebhookPolicy:
    """The policy the operator configured: named targets and the URL allowlist."""
    named = {
        name: WebhookTarget(url=config.url, headers=config.resolved_headers(name))
        for name, config in connections.webhooks.items()
    }
    return WebhookPolicy(
        named=named, allowed_hosts=settings.webhook_allowed_hosts, sink=connections.webhook_sink
    )
