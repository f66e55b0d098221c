from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from common.contracts.errors import ConfigurationError, DeliveryError, RenderError
from common.contracts.messages import ErrorCode
from common.platform.connections import Connections
from common.platform.webhooks import WebhookPolicy, WebhookRefused, WebhookTarget
from services.notifier.webhook import encode_json, post_json, render_json_body

SECRET = "Bearer s3cr3t-token-4471"
QUERY_TOKEN = "q-token-90210-abcdef"
BODY = b'{"rows":3,"flow":"daily"}'


@dataclass(frozen=True)
class Received:
    path_qs: str
    headers: CIMultiDictProxy[str]
    body: bytes


class Receiver:
    """A webhook receiver on a free local port that records what reaches it."""

    def __init__(self) -> None:
        self.posts: list[Received] = []
        self.moved_hits = 0
        #: Set only when the test ends, so /hang never answers while a test waits on it.
        self.release = asyncio.Event()
        self.base = ""
        self.app = web.Application()
        self.app.router.add_post("/hook", self._hook)
        self.app.router.add_post("/status/{code}", self._status)
        self.app.router.add_post("/redirect", self._redirect)
        self.app.router.add_route("*", "/moved-here", self._moved)
        self.app.router.add_post("/hang", self._hang)
        self.app.router.add_post("/verbose", self._verbose)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    async def _hook(self, request: web.Request) -> web.Response:
        self.posts.append(Received(request.path_qs, request.headers, await request.read()))
        return web.Response(status=202, text="accepted")

    async def _status(self, request: web.Request) -> web.Response:
        # Echo what was sent, as careless receivers do, to prove the error message redacts it.
        echoed = {"path": request.path_qs, "headers": dict(request.headers)}
        code = int(request.match_info["code"])
        headers = {"Retry-After": "120"} if code in (429, 503) else {}
        return web.Response(status=code, text=f"no thanks: {json.dumps(echoed)}", headers=headers)

    async def _redirect(self, request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/moved-here?sig=" + QUERY_TOKEN})

    async def _moved(self, request: web.Request) -> web.Response:
        self.moved_hits += 1
        return web.Response(status=200)

    async def _verbose(self, request: web.Request) -> web.Response:
        return web.Response(status=422, text="x" * 10_000)

    async def _hang(self, request: web.Request) -> web.Response:
        await self.release.wait()
        return web.Response(status=200)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    runner = web.AppRunner(receiver.app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        receiver.base = f"http://{host}:{port}"
        yield receiver
    finally:
        receiver.release.set()
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def new_key() -> str:
    return uuid.uuid4().hex


def flow_url(url: str) -> WebhookTarget:
    """*url* as a flow gives it, through the policy a local receiver needs."""
    return WebhookPolicy(named={}, allowed_hosts=["127.0.0.1"]).resolve(
        webhook=None, url=url, field="steps[0]"
    )


async def delivery_error(
    session: aiohttp.ClientSession, target: WebhookTarget, *, timeout: float = 5
) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        await post_json(session, target, BODY, idempotency_key=new_key(), timeout=timeout)
    return caught.value


# ---------------------------------------------------------------------------
# Posting
# ---------------------------------------------------------------------------


async def test_a_post_arrives_with_the_body_and_headers(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    target = WebhookTarget(url=receiver.url("/hook?team=ops"), headers={"Authorization": SECRET})
    key = new_key()

    status = await post_json(session, target, BODY, idempotency_key=key)

    assert status == 202
    [post] = receiver.posts
    assert post.path_qs == "/hook?team=ops"
    assert post.body == BODY
    assert post.headers["Content-Type"] == "application/json"
    assert post.headers["Idempotency-Key"] == key
    assert post.headers["Authorization"] == SECRET
    assert post.headers["User-Agent"] == "adxflow"


async def test_configured_headers_cannot_replace_the_content_type_or_the_key(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    target = WebhookTarget(
        url=receiver.url("/hook"),
        headers={"content-type": "text/plain", "IDEMPOTENCY-KEY": "fixed", "User-Agent": "ops-bot"},
    )
    key = new_key()

    await post_json(session, target, BODY, idempotency_key=key)

    [post] = receiver.posts
    assert post.headers.getall("Content-Type") == ["application/json"]
    assert post.headers.getall("Idempotency-Key") == [key]
    assert post.headers["User-Agent"] == "ops-bot"


@pytest.mark.parametrize("code", [400, 404])
async def test_a_client_error_is_a_rejection(
    receiver: Receiver, session: aiohttp.ClientSession, code: int
) -> None:
    error = await delivery_error(session, flow_url(receiver.url(f"/status/{code}")))

    assert error.code is ErrorCode.WEBHOOK_REJECTED
    assert error.retryable is False
    assert f"HTTP {code}" in error.message
    assert "no thanks" in error.message
    assert receiver.url(f"/status/{code}") in error.message


@pytest.mark.parametrize("code", [503, 429, 408])
async def test_a_server_error_or_throttling_is_retryable(
    receiver: Receiver, session: aiohttp.ClientSession, code: int
) -> None:
    error = await delivery_error(session, flow_url(receiver.url(f"/status/{code}")))

    assert error.code is ErrorCode.WEBHOOK_UNAVAILABLE
    assert error.retryable is True
    assert f"HTTP {code}" in error.message


async def test_retry_after_is_quoted(receiver: Receiver, session: aiohttp.ClientSession) -> None:
    error = await delivery_error(session, flow_url(receiver.url("/status/429")))

    assert "Retry-After: 120" in error.message


async def test_a_redirect_is_refused_and_not_followed(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    error = await delivery_error(session, flow_url(receiver.url("/redirect")))

    assert error.code is ErrorCode.WEBHOOK_REJECTED
    assert error.retryable is False
    assert "HTTP 302" in error.message
    assert "/moved-here" in error.message
    assert QUERY_TOKEN not in error.message
    assert receiver.moved_hits == 0


async def test_a_closed_port_is_unavailable(session: aiohttp.ClientSession) -> None:
    port = free_port()

    error = await delivery_error(session, flow_url(f"http://127.0.0.1:{port}/hook?token={QUERY_TOKEN}"))

    assert error.code is ErrorCode.WEBHOOK_UNAVAILABLE
    assert error.retryable is True
    assert f"127.0.0.1:{port}" in error.message
    assert QUERY_TOKEN not in error.message


async def test_a_receiver_that_does_not_answer_times_out(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    error = await delivery_error(session, flow_url(receiver.url("/hang")), timeout=0.2)

    assert error.code is ErrorCode.WEBHOOK_UNAVAILABLE
    assert error.retryable is True
    assert "did not answer within 0.2 s" in error.message


async def test_a_long_refusal_is_quoted_in_part(receiver: Receiver, session: aiohttp.ClientSession) -> None:
    error = await delivery_error(session, flow_url(receiver.url("/verbose")))

    assert "x" * 300 in error.message
    assert "x" * 301 not in error.message


# ---------------------------------------------------------------------------
# Secrets stay out of messages
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", [401, 503])
async def test_echoed_secrets_are_redacted(
    receiver: Receiver, session: aiohttp.ClientSession, code: int
) -> None:
    target = WebhookTarget(
        url=receiver.url(f"/status/{code}?token={QUERY_TOKEN}"), headers={"X-Auth": SECRET}
    )

    error = await delivery_error(session, target)

    assert "no thanks" in error.message
    assert "s3cr3t-token-4471" not in error.message
    assert QUERY_TOKEN not in error.message
    assert "token=" not in error.message


async def test_a_configured_target_is_named_not_spelled_out(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    # Some services put the token in the path, so a configured URL's path is as secret as its headers.
    path = "/status/404?v=1"
    policy = WebhookPolicy(
        named={"alerts": WebhookTarget(url=receiver.url(path), headers={"Authorization": SECRET})},
        allowed_hosts=[],
    )

    error = await delivery_error(session, policy.resolve(webhook="alerts", url=None, field="steps[1]"))

    assert "'alerts'" in error.message
    assert "/status/404" not in error.message
    assert "s3cr3t-token-4471" not in error.message


def test_repr_masks_header_values_and_the_query() -> None:
    target = WebhookTarget(
        url=f"https://hooks.example.com/in?token={QUERY_TOKEN}", headers={"X-Auth": SECRET}
    )

    shown = repr(target)

    assert "X-Auth" in shown
    assert "s3cr3t" not in shown
    assert QUERY_TOKEN not in shown


# ---------------------------------------------------------------------------
# Policy
# ---------------------------------------------------------------------------


def policy(*allowed: str) -> WebhookPolicy:
    named = {"ops": WebhookTarget(url="https://hooks.internal/ops", headers={"Authorization": SECRET})}
    return WebhookPolicy(named=named, allowed_hosts=allowed)


def refusal(policy: WebhookPolicy, *, webhook: str | None = None, url: str | None = None) -> str:
    with pytest.raises(WebhookRefused) as caught:
        policy.resolve(webhook=webhook, url=url, field="steps[2]")
    return str(caught.value)


def test_a_configured_name_resolves_to_its_target() -> None:
    target = policy().resolve(webhook="ops", url=None, field="steps[2]")

    assert target.url == "https://hooks.internal/ops"
    assert target.headers == {"Authorization": SECRET}
    assert target.name == "ops"


def test_an_unknown_name_is_refused_naming_the_field() -> None:
    message = refusal(policy(), webhook="nope")

    assert message.startswith("steps[2].webhook: ")
    assert "'nope'" in message
    assert "'ops'" in message


def test_with_embedded_modes_outbox_an_unknown_name_posts_there_and_a_configured_one_where_it_was() -> None:
    named = {"ops": WebhookTarget(url="https://hooks.internal/ops", headers={"Authorization": SECRET})}
    embedded = WebhookPolicy(named=named, allowed_hosts=[], sink="http://127.0.0.1:5999")

    unknown = embedded.resolve(webhook="team-channel", url=None, field="steps[2]")
    assert (unknown.url, unknown.name, dict(unknown.headers)) == (
        "http://127.0.0.1:5999/team-channel",
        "team-channel",
        {},
    )
    assert embedded.resolve(webhook="ops", url=None, field="steps[2]").url == "https://hooks.internal/ops"
    # A flow's own URL is still held to the allowlist.
    assert "allowlist" in refusal(embedded, url="https://hooks.example.com/")


def test_the_webhook_outbox_must_be_on_loopback() -> None:
    connections = Connections()
    with pytest.raises(ConfigurationError, match="loopback"):
        connections.add_webhook_sink("http://10.0.0.5:8000")
    connections.add_webhook_sink("http://127.0.0.1:8000/")
    assert connections.webhook_sink == "http://127.0.0.1:8000"


@pytest.mark.parametrize(("webhook", "url"), [(None, None), ("ops", "https://hooks.example.com/")])
def test_exactly_one_target_is_named(webhook: str | None, url: str | None) -> None:
    assert refusal(policy("hooks.example.com"), webhook=webhook, url=url).startswith("steps[2]: ")


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/in",
        "https://HOOKS.Example.COM:8443/in?x=1",
        "https://hooks.example.com./in",
    ],
)
def test_an_exact_host_on_the_allowlist_is_allowed(url: str) -> None:
    assert policy("hooks.example.com").resolve(webhook=None, url=url, field="steps[2]").url == url


def test_a_host_off_the_allowlist_is_refused_naming_the_field() -> None:
    message = refusal(policy("hooks.example.com"), url="https://evil.example/in")

    assert message == "steps[2].url: host 'evil.example' is not in the operator's webhook allowlist"


@pytest.mark.parametrize("url", ["https://a.example.com/in", "https://a.b.example.com/in"])
def test_a_wildcard_allows_subdomains(url: str) -> None:
    assert policy("*.example.com").resolve(webhook=None, url=url, field="steps[2]").url == url


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/in",
        "https://evilexample.com/in",
        "https://a.example.com.evil.net/in",
        "https://example.com@evil.net/in",
    ],
)
def test_a_wildcard_allows_nothing_else(url: str) -> None:
    assert refusal(policy("*.example.com"), url=url).startswith("steps[2].url: ")


def test_http_is_refused_for_a_host_that_is_not_loopback() -> None:
    message = refusal(policy("hooks.example.com"), url="http://hooks.example.com/in?token=" + QUERY_TOKEN)

    assert message.startswith("steps[2].url: ")
    assert "https" in message
    assert QUERY_TOKEN not in message


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/in", "http://localhost/in", "http://[::1]:9000/in"])
def test_http_is_allowed_for_loopback_on_the_allowlist(url: str) -> None:
    allowed = policy("127.0.0.1", "localhost", "::1")

    assert allowed.resolve(webhook=None, url=url, field="steps[2]").url == url


def test_loopback_still_needs_the_allowlist() -> None:
    assert "allowlist" in refusal(policy("hooks.example.com"), url="http://127.0.0.1:8080/in")


@pytest.mark.parametrize(
    "url", ["https://user:hunter2-pass@hooks.example.com/in", "https://token-only@hooks.example.com/in"]
)
def test_credentials_in_the_url_are_refused(url: str) -> None:
    message = refusal(policy("hooks.example.com"), url=url)

    assert message.startswith("steps[2].url: credentials")
    assert "hunter2" not in message
    assert "token-only" not in message


@pytest.mark.parametrize("url", ["ftp://hooks.example.com/in", "/relative/path", "hooks.example.com/in", ""])
def test_anything_but_an_absolute_http_url_is_refused(url: str) -> None:
    assert refusal(policy("hooks.example.com"), url=url).startswith("steps[2].url: ")


def test_a_configured_target_must_be_an_http_url() -> None:
    with pytest.raises(ConfigurationError, match="webhook 'bad'"):
        WebhookPolicy(named={"bad": WebhookTarget(url="hooks.internal/x")}, allowed_hosts=[])


# ---------------------------------------------------------------------------
# Bodies
# ---------------------------------------------------------------------------


def test_a_rendered_body_becomes_compact_utf8_json() -> None:
    rendered = '{\n  "text": "Zürich ✓",\n  "rows": [1, 2.5, null]\n}\n'

    assert (
        render_json_body(rendered, field="steps[2].body")
        == '{"text":"Zürich ✓","rows":[1,2.5,null]}'.encode()
    )


def test_a_body_that_is_not_json_names_the_field_and_the_position() -> None:
    with pytest.raises(RenderError) as caught:
        render_json_body('{"rows": 3,\n "flow": daily}', field="steps[2].body")

    message = caught.value.message
    assert message.startswith("steps[2].body: ")
    assert "line 2 column 10" in message


@pytest.mark.parametrize("rendered", ['{"x": NaN}', '{"x": Infinity}', '{"x": 1e400}'])
def test_numbers_json_cannot_carry_are_refused(rendered: str) -> None:
    with pytest.raises(RenderError, match=r"^steps\[2\]\.body: "):
        render_json_body(rendered, field="steps[2].body")


def test_encoded_json_is_compact_utf8_and_sorted_on_request() -> None:
    finished = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)

    body = encode_json(
        {"run": {"status": "succeeded", "id": "Zürich"}, "step": {"id": "notify", "finished_at": finished}},
        sort_keys=True,
    )

    expected = (
        '{"run":{"id":"Zürich","status":"succeeded"},'
        '"step":{"finished_at":"2024-05-01 12:00:00+00:00","id":"notify"}}'
    )
    assert body == expected.encode()
