"""Browser sessions for the history pages when the APIs require a token.

A browser cannot send ``Authorization: Bearer`` when it follows a link, so
the pages offer a login form that checks the API token and sets a cookie.
The cookie never holds the token: it holds an expiry and an HMAC of that
expiry keyed with the token, so any replica configured with the same token
accepts it and changing the token ends every session.

State-changing requests authenticated by the cookie must also carry
:data:`CSRF_HEADER`: a cross-site form cannot set a custom header, and a
cross-site script that tries needs a CORS preflight nobody answers. The
cookie is ``SameSite=Strict`` as well.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote

from aiohttp import web
from pydantic import SecretStr

from common.platform.http import Handler, error_body, unauthorized

COOKIE = "adxflow_session"
CSRF_HEADER = "X-Adxflow-Request"
SESSION_SECONDS = 12 * 3600
LOGIN_PATH = "/ui/login"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_OPEN_PREFIXES = ("/ui/static/",)


def is_page(path: str) -> bool:
    return path == "/" or path == "/ui" or path.startswith("/ui/")


def csrf_ok(request: web.Request) -> bool:
    return request.method in _SAFE_METHODS or request.headers.get(CSRF_HEADER) == "1"


def csrf_refusal() -> web.Response:
    return error_body(403, f"send the {CSRF_HEADER}: 1 header with this request", code="Forbidden")


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a page of this service, never another site."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/runs"


class Sessions:
    def __init__(self, token: SecretStr | None) -> None:
        self._key = token.get_secret_value().encode() if token is not None else None

    @property
    def required(self) -> bool:
        return self._key is not None

    def token_matches(self, supplied: str) -> bool:
        return self._key is not None and hmac.compare_digest(supplied.encode(), self._key)

    def _signature(self, expires: int) -> str:
        assert self._key is not None
        return hmac.new(self._key, f"adxflow-session:{expires}".encode(), hashlib.sha256).hexdigest()

    def issue(self, now: float | None = None) -> str:
        expires = int(now if now is not None else time.time()) + SESSION_SECONDS
        return f"{expires}.{self._signature(expires)}"

    def valid(self, value: str | None, now: float | None = None) -> bool:
        if self._key is None or not value:
            return False
        expires_text, _, signature = value.partition(".")
        if not expires_text.isdigit():
            return False
        expires = int(expires_text)
        if expires < (now if now is not None else time.time()):
            return False
        return hmac.compare_digest(signature, self._signature(expires))

    def set_cookie(self, request: web.Request, response: web.StreamResponse) -> None:
        response.set_cookie(
            COOKIE,
            self.issue(),
            max_age=SESSION_SECONDS,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )

    async def __call__(self, request: web.Request, handler: Handler, bearer_ok: bool) -> web.StreamResponse:
        """The gate the API's bearer middleware consults: bearer token, login cookie, or the way to log in."""
        if bearer_ok or request.path == LOGIN_PATH or request.path.startswith(_OPEN_PREFIXES):
            return await handler(request)
        if self.valid(request.cookies.get(COOKIE)):
            if not csrf_ok(request):
                return csrf_refusal()
            return await handler(request)
        if is_page(request.path) and request.method in _SAFE_METHODS:
            raise web.HTTPSeeOther(f"{LOGIN_PATH}?next={quote(request.path_qs, safe='/')}")
        return unauthorized()
