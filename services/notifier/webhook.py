"""Posts a flow's JSON payload to a webhook the operator allows.

A ``post_webhook`` step names either a target the operator configured
(``webhook: <name>``, which may carry secret headers) or a URL of its own
(``url:``), and a flow-given URL must be on the operator's allowlist. The same
:class:`WebhookPolicy` check runs when a flow is saved and again before each
post, so a narrowed allowlist also stops flows saved earlier.

The post goes to that URL and nowhere else: redirects are refused, not
followed, because following one would send the payload (and any configured
header) to a host nobody allowed. Failures become a
:class:`~common.errors.DeliveryError` that says whether trying again can help;
its message never contains a configured header, a query string (they often
carry tokens) or, for a configured target, the URL's path (some services put
the token there).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import aiohttp
from yarl import URL

from common.contracts import ErrorCode
from common.errors import ConfigurationError, DeliveryError, RenderError

#: A receiver that can take the post later: timeouts and throttling.
_TRANSIENT_4XX = frozenset({408, 429})
#: How much of a refusal's body the error quotes.
_EXCERPT_CHARS = 300
_EXCERPT_BYTES = 4 * _EXCERPT_CHARS
#: Shorter fragments are not worth redacting: replacing them would mangle the message.
_MIN_SECRET = 6
_MASK = "**********"


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
        masked = {header: _MASK for header in self.headers}
        return f"WebhookTarget(url={_public_url(self)!r}, headers={masked!r}, name={self.name!r})"


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

    def resolve(self, *, webhook: str | None, url: str | None, field: str) -> WebhookTarget:
        """The target a step names; *field* is where the step is (``steps[2]``).

        Refusals name the step's ``webhook`` or ``url`` key under *field*.
        """
        if webhook is not None and url is None:
            return self._configured(webhook, f"{field}.webhook")
        if url is not None and webhook is None:
            return self._allowed(url, f"{field}.url")
        raise WebhookRefused(f"{field}: name exactly one of 'webhook' (configured by the operator) or 'url'")

    def _configured(self, name: str, field: str) -> WebhookTarget:
        try:
            return self._named[name]
        except KeyError:
            known = ", ".join(repr(known) for known in sorted(self._named)) or "none"
            raise WebhookRefused(
                f"{field}: no webhook named {name!r} is configured (configured: {known})"
            ) from None

    def _allowed(self, raw: str, field: str) -> WebhookTarget:
        try:
            url = URL(raw)
        except ValueError as exc:
            raise WebhookRefused(f"{field}: not a valid URL: {exc}") from None
        # post_json parses the same string with the same parser, so the host checked is the host reached.
        if not (url.absolute and url.host and url.scheme in ("http", "https")):
            raise WebhookRefused(f"{field}: {_without_secrets(url)!r} is not an absolute http or https URL")
        if url.user is not None or url.password is not None:
            raise WebhookRefused(
                f"{field}: credentials in a URL are refused; ask the operator to configure a named webhook"
            )
        host = _normal_host(url.host)
        if not self._host_allowed(host):
            raise WebhookRefused(f"{field}: host {url.host!r} is not in the operator's webhook allowlist")
        if url.scheme == "http" and host not in self._http:
            raise WebhookRefused(f"{field}: {_without_secrets(url)!r} must use https")
        return WebhookTarget(url=raw)

    def _host_allowed(self, host: str) -> bool:
        return host in self._exact or any(host.endswith(suffix) for suffix in self._suffixes)


async def post_json(
    session: aiohttp.ClientSession,
    target: WebhookTarget,
    body: bytes,
    *,
    idempotency_key: str,
    timeout: float = 30.0,
) -> int:
    """POST *body* to *target*; return the HTTP status when it is 2xx.

    The ``Idempotency-Key`` lets a receiver recognise a post delivered again after
    a retry; the caller keeps it the same for every attempt of a step.
    """
    if not idempotency_key or not (idempotency_key.isascii() and idempotency_key.isprintable()):
        raise ValueError("idempotency_key must be a non-empty line of printable ASCII")
    # An operator may set another User-Agent; the body's type and the key are not theirs to change.
    headers = {"User-Agent": "adxflow"}
    headers.update(target.headers)
    for fixed in ("Content-Type", "Idempotency-Key"):
        for header in [h for h in headers if h.lower() == fixed.lower()]:
            del headers[header]
    headers["Content-Type"] = "application/json"
    headers["Idempotency-Key"] = idempotency_key

    shown = _shown(target)
    try:
        async with session.post(
            URL(target.url),
            data=body,
            headers=headers,
            allow_redirects=False,
            raise_for_status=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            if 200 <= response.status < 300:
                return response.status
            raise await _refusal(response, target)
    except aiohttp.InvalidURL:
        raise _failure(
            f"the webhook {shown} has an invalid URL", target, ErrorCode.WEBHOOK_REJECTED, retryable=False
        ) from None
    except TimeoutError:
        raise _failure(
            f"the webhook {shown} did not answer within {timeout:g} s",
            target,
            ErrorCode.WEBHOOK_UNAVAILABLE,
            retryable=True,
        ) from None
    except aiohttp.ClientError as exc:
        raise _failure(
            f"cannot reach the webhook {shown}: {type(exc).__name__}: {exc}",
            target,
            ErrorCode.WEBHOOK_UNAVAILABLE,
            retryable=True,
        ) from None


async def _refusal(response: aiohttp.ClientResponse, target: WebhookTarget) -> DeliveryError:
    """The error for a status other than 2xx, quoting the start of the body."""
    shown = _shown(target)
    code = response.status
    status = f"HTTP {code} {response.reason or ''}".rstrip()
    excerpt = await _excerpt(response)
    if code >= 500 or code in _TRANSIENT_4XX:
        retry_after = response.headers.get("Retry-After")
        advice = f" (Retry-After: {retry_after})" if retry_after else ""
        return _failure(
            f"the webhook {shown} is unavailable: {status}{advice}: {excerpt}",
            target,
            ErrorCode.WEBHOOK_UNAVAILABLE,
            retryable=True,
        )
    if 300 <= code < 400:
        location = response.headers.get("Location")
        where = f" to {_shown(WebhookTarget(url=location))}" if location else ""
        return _failure(
            f"the webhook {shown} answered {status}, a redirect{where}; redirects are not followed, "
            f"configure the final URL: {excerpt}",
            target,
            ErrorCode.WEBHOOK_REJECTED,
            retryable=False,
        )
    return _failure(
        f"the webhook {shown} refused the post: {status}: {excerpt}",
        target,
        ErrorCode.WEBHOOK_REJECTED,
        retryable=False,
    )


def render_json_body(rendered_template: str, *, field: str) -> bytes:
    """The rendered body template as compact UTF-8 JSON; a RenderError naming *field* if it is not JSON."""
    try:
        value = json.loads(rendered_template, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise RenderError(
            f"{field}: the rendered body is not valid JSON: {exc.msg} "
            f"at line {exc.lineno} column {exc.colno} (character {exc.pos})"
        ) from None
    except ValueError as exc:
        raise RenderError(f"{field}: the rendered body is not valid JSON: {exc}") from None
    return _compact(value)


def default_body(*, run: Mapping[str, Any], step: Mapping[str, Any]) -> bytes:
    """The generic payload ``{"run": {...}, "step": {...}}`` for a step without a body template."""
    return _compact({"run": dict(run), "step": dict(step)}, sort_keys=True)


def _compact(value: Any, *, sort_keys: bool = False) -> bytes:
    # allow_nan=False: NaN and Infinity are not JSON, and a receiver's parser may reject them.
    text = json.dumps(
        value, default=str, separators=(",", ":"), sort_keys=sort_keys, ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


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


def _without_secrets(url: URL) -> str:
    if url.absolute:
        url = url.with_user(None)
    return str(url.with_query(None).with_fragment(None))


def _public_url(target: WebhookTarget) -> str:
    """*target*'s URL without credentials, query or fragment, and without the path if it is configured."""
    try:
        url = URL(target.url)
    except ValueError:
        return "(invalid URL)"
    if target.name is not None and url.absolute:
        return f"{url.origin()}/…"
    return _without_secrets(url)


def _shown(target: WebhookTarget) -> str:
    """How messages name *target*: a configured one by name and origin, a flow's by its public URL."""
    url = _public_url(target)
    return f"{target.name!r} ({url})" if target.name is not None else url


def _secrets(target: WebhookTarget) -> list[str]:
    """Text a receiver might echo back that must not reach an error message, longest first."""
    found: set[str] = set()
    for value in target.headers.values():
        found.add(value)
        found.update(value.split())  # the token of "Bearer <token>"
    try:
        url = URL(target.url)
    except ValueError:
        url = URL()
    found.update({url.raw_query_string, url.query_string, url.raw_user or "", url.raw_password or ""})
    found.update(url.query.values())
    if target.name is not None:
        found.update({url.raw_path, url.path, *url.raw_parts, *url.parts})
    return sorted((secret for secret in found if len(secret) >= _MIN_SECRET), key=len, reverse=True)


def _failure(message: str, target: WebhookTarget, code: ErrorCode, *, retryable: bool) -> DeliveryError:
    for secret in _secrets(target):
        message = message.replace(secret, _MASK)
    return DeliveryError(message, code=code, retryable=retryable)


async def _excerpt(response: aiohttp.ClientResponse) -> str:
    """The start of a refusal's body on one line, for the error message."""
    data = bytearray()
    try:
        while len(data) < _EXCERPT_BYTES:
            chunk = await response.content.read(_EXCERPT_BYTES - len(data))
            if not chunk:
                break
            data += chunk
    except (aiohttp.ClientError, TimeoutError):
        if not data:
            return "(the body could not be read)"
    try:
        decoded = data.decode(response.charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        decoded = data.decode("utf-8", errors="replace")
    text = " ".join(decoded.split())
    if not text:
        return "(empty body)"
    return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "…"
