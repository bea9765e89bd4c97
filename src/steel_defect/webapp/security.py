"""Who may use the web app, and the headers that keep a browser from misusing its answers.

``steel-defect serve`` binds to 127.0.0.1. On any other address anyone who reaches it could
use the model, so a token is required there (``--token`` or the ``STEEL_DEFECT_TOKEN``
variable) unless ``--no-auth`` says explicitly that the network is trusted:

    token = access_token(host, args.token, args.no_auth)    # AccessError when none is given
    app = create_app(service, limits, token=token)

With a token every ``/api/`` route but ``/api/health`` (the container's liveness probe) and
``/api/login`` answers 401 unless the request carries ``Authorization: Bearer <token>`` or
the session cookie that ``POST /api/login {"token": ...}`` sets. The page asks for the token
once and logs in; the cookie (HttpOnly, SameSite=Strict) then also covers the ``<img>``
requests that cannot carry a header, and is never sent by another site's page. Tokens are
compared in constant time. No CORS headers are sent, so another origin's script can read
nothing; every answer carries ``nosniff`` and the page a Content-Security-Policy of its own
files only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os

from steel_defect.errors import UserError

TOKEN_ENV = "STEEL_DEFECT_TOKEN"
COOKIE = "steel_defect_session"
OPEN_PATHS = ("/api/health", "/api/login")
MIN_TOKEN_LENGTH = 16
# The page's own files only; blob: and data: for the example frames and the empty favicon.
# /docs and /redoc are FastAPI's Swagger and ReDoc pages, which load their scripts from a CDN.
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_DOCS = ("/docs", "/redoc")


class AccessError(UserError):
    """A ``serve`` command that would expose the model without a token, or with a weak one."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def access_token(host: str, token: str | None, no_auth: bool, env=os.environ) -> str | None:
    """The token the server requires, or None for none; raises :class:`AccessError`.

    ``token`` (``--token``) wins over ``STEEL_DEFECT_TOKEN``. Off loopback one of them, or
    ``no_auth``, is required.
    """
    token = token or env.get(TOKEN_ENV) or None
    if token is not None and no_auth:
        raise AccessError("--no-auth and a token (--token or STEEL_DEFECT_TOKEN) contradict each other")
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise AccessError(
            f"the access token has {len(token)} characters; use at least {MIN_TOKEN_LENGTH}, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe())'"
        )
    if token is None and not no_auth and not is_loopback(host):
        raise AccessError(
            f"--host {host} exposes the model to the network: set {TOKEN_ENV} (or pass --token) to "
            "require an access token, or pass --no-auth if every client that can reach it is trusted"
        )
    return token


def routed_path(scope) -> str:
    """The path the app routes on: ``scope["path"]`` without the ``root_path`` prefix that a proxy
    mount (``uvicorn --root-path /steel``) leaves in it, as Starlette's router strips it. Checks
    on the raw path would let ``/steel/api/predict`` pass as a non-API path."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :] or "/"
    return path


def session_value(token: str) -> str:
    """The cookie's value: derived from the token, so the cookie never holds the token itself."""
    return hmac.new(token.encode(), b"steel-defect session", hashlib.sha256).hexdigest()


def _cookie(headers: dict[bytes, bytes], name: str) -> str | None:
    for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _json(status: int, detail: str, extra: list[tuple[bytes, bytes]] = ()) -> tuple[dict, dict]:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    start = {"type": "http.response.start", "status": status, "headers": headers + list(extra)}
    return start, {"type": "http.response.body", "body": body}


class TokenAuth:
    """ASGI middleware: 401 for ``/api/`` requests without the token or the session cookie."""

    def __init__(self, app, token: str):
        self.app = app
        self.token = token.encode()
        self.session = session_value(token).encode()

    def allowed(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token):
            return True
        cookie = _cookie(headers, COOKIE)
        return cookie is not None and hmac.compare_digest(cookie.encode(), self.session)

    async def __call__(self, scope, receive, send):
        path = routed_path(scope)
        if scope["type"] != "http" or not path.startswith("/api/") or path in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if self.allowed(dict(scope["headers"])):
            return await self.app(scope, receive, send)
        start, body = _json(
            401,
            "this server needs an access token: send 'Authorization: Bearer <token>' "
            "(the page asks for it; the server's STEEL_DEFECT_TOKEN or --token)",
            [(b"www-authenticate", b"Bearer")],
        )
        await send(start)
        await send(body)


class SecurityHeaders:
    """ASGI middleware: nosniff, no referrer, no framing, and the page's CSP on every answer."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = [
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
        ]
        if not routed_path(scope).startswith(_DOCS):
            extra.append((b"content-security-policy", CSP.encode()))

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)
