"""Posts a flow's JSON payload to a webhook the operator allows.

Which targets are allowed is :mod:`common.platform.webhooks`'s business. The post
goes to that URL and nowhere else: redirects are refused, not followed,
because following one would send the payload (and any configured header) to
a host nobody allowed. Failures become a
:class:`~common.contracts.errors.DeliveryError` that says whether trying again can help;
its message never contains a configured header, a query string (they often
carry tokens) or, for a configured target, the URL's path (some services put
the token there).
"""

from __future__ import annotations

import json
import math
from typing import Any

import aiohttp
from yarl import URL

from common.contracts.errors import DeliveryError, RenderError
from common.contracts.messages import ErrorCode
from common.platform.webhooks import MASK, WebhookTarget, public_url

#: A receiver that can take the post later: timeouts and throttling.
_TRANSIENT_4XX = frozenset({408, 429})
#: How much of a refusal's body the error quotes.
_EXCERPT_CHARS = 300
_EXCERPT_BYTES = 4 * _EXCERPT_CHARS
#: Shorter fragments are not worth redacting: replacing them would mangle the message.
_MIN_SECRET = 6


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
    return encode_json(value)


def encode_json(value: Any, *, sort_keys: bool = False) -> bytes:
    """*value* as compact UTF-8 JSON; what is not JSON (a datetime) becomes its string."""
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


def _shown(target: WebhookTarget) -> str:
    """How messages name *target*: a configured one by name and origin, a flow's by its public URL."""
    url = public_url(target)
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
        message = message.replace(secret, MASK)
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
