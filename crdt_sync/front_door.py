"""The one front door: every HTTP request and WebSocket upgrade comes through here.

Order, outermost first (``crdt_sync.app.CrdtSyncApp`` calls nothing else):

1. :class:`~crdt_sync.browser_guard.BrowserGuard`: Host, Origin, CORS, JSON bodies.
2. :class:`FrontDoor` (this module):

   - :func:`classify` says what the request is after (a doc or none, and the mode
     it needs) from its route alone: ``/yjs/<doc>`` read; ``GET /docs/<doc>`` read,
     ``POST``/``DELETE`` write; ``GET /docs`` and ``/sync/v1/*`` read (routes that
     return many docs filter them with ``grant.covers``); mutations write (each one
     checked again against its own doc); ``/admin/*`` admin; ``/metrics`` admin;
     ``/healthz``, ``/readyz``, ``/openapi.json``, ``/web/*`` need no token. A path
     not in this table needs a valid token (read): nothing is open by omission.
   - the token (:func:`~crdt_sync.auth.extract.token_from_scope`) is authenticated
     for that (doc, mode); the principal goes into the scope
     (:func:`~crdt_sync.auth.principal.set_principal`), which every route reads.
   - limits: HTTP requests per principal (sliding window, 429 + ``Retry-After``);
     open WebSockets and event streams per actor and per IP (a
     :class:`~crdt_sync.ratelimit.ConnectionLease` held for the connection's life).

Refusals happen before the route runs, so a refused connection loads no room and
creates no doc. HTTP: 401/403/429 JSON ``{error, detail}`` (401 with
``WWW-Authenticate: Bearer``). WebSocket: the handshake is accepted (echoing the
chosen subprotocol, so a browser sees the close code), a Yjs client refused with
403 first gets the y-protocols auth message ``permission denied``, then the close:
4401 (who are you), 4403 (not yours), 4429 (too many connections).

Every refusal is one line on the ``crdt_sync.audit`` logger: who (org/actor if
known), what (method or ``ws``, path without the query, doc, mode), why, from where.
Never a token: the path is logged, the query string (``?token=``) never.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import anyio

from rooms.close_codes import CloseCode
from rooms.codec import encode_auth

from .asgi import client_ip, peer, route_path
from .auth.authenticator import Authenticator, AuthError
from .auth.extract import choose_subprotocol, offered_subprotocols, token_from_scope
from .auth.principal import Mode, Principal, set_principal
from .auth.tokens import TokenError
from .errors import json_error_body
from .ratelimit import ConnectionLimiter, ConnectionLimitExceeded, SlidingWindowLimiter

log = logging.getLogger(__name__)
audit = logging.getLogger("crdt_sync.audit")

#: Paths that need no token (health checks, the API description, the static pages).
PUBLIC_PATHS = frozenset({"/", "/board", "/inspect", "/healthz", "/readyz", "/openapi.json"})
PUBLIC_PREFIXES = ("/web/",)
#: Long-lived HTTP responses that count as connections (per actor / per IP).
STREAM_PATHS = frozenset({"/sync/v1/events"})
#: The y-protocols auth message a refused Yjs client gets before the close (403).
PERMISSION_DENIED = encode_auth(0, "permission denied")
#: Where the front door leaves the WebSocket subprotocol to echo (see :mod:`.auth.extract`).
SUBPROTOCOL_KEY = "crdt_sync.subprotocol"
#: Most client addresses remembered as blocked after repeated auth failures.
MAX_BLOCKED_PEERS = 100_000


@dataclass(frozen=True, slots=True)
class Target:
    """What a request is after, from its route alone.

    Attributes:
        kind: ``public`` (no token), ``http``, ``stream`` (long-lived HTTP),
            ``yjs`` or ``feed`` (WebSockets).
        doc: The one doc it touches, ``None`` for none or many.
        need: The mode it needs.
    """

    kind: str
    doc: str | None
    need: Mode


#: The version routes (crdt_sync.versions_api), by method, in the order they are
#: registered: what of ``/docs/<rest>`` they take for the doc. The routes' own
#: patterns, so that the doc checked here is the doc the route serves.
_VERSION_ITEM = re.compile(r"(?s)(.*)/versions/[^/]+")
_VERSION_LIST = re.compile(r"(?s)(.*)/versions")
_VERSION_ROUTES: dict[str, tuple[re.Pattern[str], ...]] = {
    "GET": (_VERSION_ITEM, _VERSION_LIST),
    "HEAD": (_VERSION_ITEM, _VERSION_LIST),
    "POST": (re.compile(r"(?s)(.*)/versions/[^/]+/restore"), _VERSION_LIST),
}


def _versions_doc(method: str, rest: str) -> str | None:
    for pattern in _VERSION_ROUTES.get(method, ()):
        match = pattern.fullmatch(rest)
        if match is not None:
            return match.group(1)
    return None


def classify(scope: dict[str, Any]) -> Target:
    """The :class:`Target` of an ``http`` or ``websocket`` scope."""
    path = route_path(scope)
    if scope["type"] == "websocket":
        if path.startswith("/yjs/"):
            return Target("yjs", path[len("/yjs/") :], "read")
        return Target("feed", None, "read")  # /sync/v1/ws; anything else 404s behind us
    method = scope.get("method", "GET")
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or path == "/web":
        return Target("public", None, "read")
    if path in STREAM_PATHS:
        return Target("stream", None, "read")
    if path == "/metrics" or path.startswith("/admin/") or path == "/admin":
        return Target("http", None, "admin")
    reading = method in ("GET", "HEAD")
    if path.startswith("/docs/"):
        rest = path[len("/docs/") :]
        if (versioned := _versions_doc(method, rest)) is not None:
            rest = versioned  # the routes /docs/{doc}/versions... (registered first)
        elif method in ("GET", "HEAD", "POST") and rest.endswith("/update"):
            rest = rest[: -len("/update")]  # the route /docs/{doc}/update
        return Target("http", rest, "read" if reading else "write")
    if path.startswith("/sync/v1/presence/"):
        return Target("http", path[len("/sync/v1/presence/") :], "read")
    if path == "/sync/v1/mutations":
        return Target("http", None, "write")
    return Target("http", None, "read" if reading else "write")


class FrontDoor:
    """ASGI: authenticate, limit, then hand on to ``app`` (see the module docstring).

    Args:
        app: What serves the request once admitted (the routes).
        auth: Decides who a token is.
        http_limiter: HTTP requests per principal key.
        connections: Open WebSockets and streams per actor and per IP.
    """

    def __init__(
        self,
        app: Any,
        auth: Authenticator,
        *,
        http_limiter: SlidingWindowLimiter | None,
        connections: ConnectionLimiter,
    ) -> None:
        self.app = app
        self.auth = auth
        self.http_limiter = http_limiter
        self.connections = connections
        #: peers that failed authentication too often: monotonic time they may retry
        self._blocked: OrderedDict[str, float] = OrderedDict()
        self.refused = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan
            return
        target = classify(scope)
        if target.kind == "public":
            await self.app(scope, receive, send)
            return
        ip = client_ip(scope)
        now = time.monotonic()
        # Echoed by every WebSocket answer, refusals included: a browser fails a
        # handshake whose answer names none of the subprotocols it offered, and would
        # never see the close code.
        subprotocol = (
            choose_subprotocol(offered_subprotocols(scope)) if kind == "websocket" else None
        )
        retry = self._blocked_for(ip, now)
        if retry > 0:
            # Too many failed attempts from this address: not even asked (a webhook
            # would be asked once per attempt otherwise).
            await self._limited(
                (scope, receive, send),
                target,
                None,
                ip,
                ("too_many_failures", "auth failures"),
                "too_many_requests",
                "too many failed authentications; retry later",
                retry,
                subprotocol,
            )
            return
        try:
            extracted = token_from_scope(scope)
            subprotocol = extracted.subprotocol
            principal = await self.auth.authenticate(extracted.token, target.doc, target.need)
        except TokenError as exc:
            error = AuthError(401, exc.reason, exc.detail)
            await self._auth_refused(scope, receive, send, target, error, ip, subprotocol)
            return
        except AuthError as exc:
            await self._auth_refused(scope, receive, send, target, exc, ip, subprotocol)
            return
        set_principal(scope, principal)
        if kind == "websocket":
            # The subprotocol the endpoint must echo in its accept (None: none).
            scope[SUBPROTOCOL_KEY] = subprotocol
        key = principal.limit_key(ip)
        if kind == "http" and self.http_limiter is not None:
            ok, retry = self.http_limiter.allow(key, now)
            if not ok:
                await self._limited(
                    (scope, receive, send),
                    target,
                    principal,
                    ip,
                    ("rate_limited", "HTTP requests"),
                    "too_many_requests",
                    f"more than {self.http_limiter.limit} requests per "
                    f"{self.http_limiter.window:g} s",
                    retry,
                )
                return
        if kind == "http" and target.kind != "stream":
            await self.app(scope, receive, send)
            return
        actor = None if principal.is_anonymous else key
        try:
            lease = self.connections.acquire(actor, ip)
        except ConnectionLimitExceeded as exc:
            await self._limited(
                (scope, receive, send),
                target,
                principal,
                ip,
                ("too_many_connections", str(exc)),
                "too_many_connections",
                str(exc),
                1.0,
                subprotocol,
            )
            return
        with lease:
            await self.app(scope, receive, send)

    # -- refusals -------------------------------------------------------------------

    def _blocked_for(self, ip: str | None, now: float) -> float:
        if ip is None or not self._blocked:
            return 0.0
        until = self._blocked.get(ip)
        if until is None:
            return 0.0
        if until <= now:
            del self._blocked[ip]
            return 0.0
        return until - now

    def _count_failure(self, ip: str | None) -> None:
        """Auth failures count against the address' HTTP budget; past it the address is
        refused without asking the authenticator until the window lets it in again."""
        if ip is None or self.http_limiter is None:
            return
        now = time.monotonic()
        ok, retry = self.http_limiter.allow(("auth-failures", ip), now)
        if not ok:
            self._blocked[ip] = now + retry
            self._blocked.move_to_end(ip)
            while len(self._blocked) > MAX_BLOCKED_PEERS:
                self._blocked.popitem(last=False)

    async def _auth_refused(
        self,
        scope: dict[str, Any],
        receive: Any,
        send: Any,
        target: Target,
        exc: AuthError,
        ip: str | None,
        subprotocol: str | None,
    ) -> None:
        self._audit(scope, target, None, exc.status, exc.reason, exc.detail, ip)
        if exc.status == 401:
            self._count_failure(ip)
        error = "unauthorized" if exc.status == 401 else "forbidden"
        detail = exc.detail if exc.detail == exc.reason else f"{exc.reason}: {exc.detail}"
        await self._refuse(
            scope, receive, send, target, exc.status, error, detail, None, subprotocol
        )

    def _audit(
        self,
        scope: dict[str, Any],
        target: Target,
        principal: Principal | None,
        status: int,
        reason: str,
        detail: str,
        ip: str | None,
    ) -> None:
        self.refused += 1
        who = f"{principal.org}/{principal.actor}" if principal is not None else "-"
        what = "ws" if scope["type"] == "websocket" else scope.get("method", "?")
        audit.warning(
            "refused %s %r doc=%r need=%s -> %d %s (%s) who=%r peer=%s",
            what,
            route_path(scope)[:200],
            None if target.doc is None else target.doc[:200],
            target.need,
            status,
            reason,
            detail,
            who,
            peer(scope),
        )

    async def _limited(
        self,
        asgi: tuple[dict[str, Any], Any, Any],
        target: Target,
        principal: Principal | None,
        ip: str | None,
        audit: tuple[str, str],
        error: str,
        detail: str,
        retry_after: float,
        subprotocol: str | None = None,
    ) -> None:
        """Past a limit: one audit line, then 429 (HTTP) or 4429 (WebSocket)."""
        scope, receive, send = asgi
        self._audit(scope, target, principal, 429, *audit, ip)
        await self._refuse(
            scope, receive, send, target, 429, error, detail, retry_after, subprotocol
        )

    async def _refuse(
        self,
        scope: dict[str, Any],
        receive: Any,
        send: Any,
        target: Target,
        status: int,
        error: str,
        detail: str,
        retry_after: float | None,
        subprotocol: str | None,
    ) -> None:
        if scope["type"] == "http":
            if retry_after is None:
                body = json_error_body(error, detail)
            else:  # the shape of the delta throttle's 429 (openapi: Throttled)
                body = json.dumps(
                    {"error": error, "detail": detail, "retry_after_ms": round(retry_after * 1000)}
                ).encode("utf-8")
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            if status == 401:
                headers.append((b"www-authenticate", b'Bearer realm="crdt-sync"'))
            if retry_after is not None:
                seconds = max(1, math.ceil(retry_after))
                headers.append((b"retry-after", str(seconds).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await refuse_websocket(receive, send, target.kind, status, detail, subprotocol)


async def refuse_websocket(
    receive: Any, send: Any, kind: str, status: int, reason: str, subprotocol: str | None
) -> None:
    """Accept (echoing ``subprotocol``) and close with ``4000 + status``: a browser
    learns the code only from a close frame, never from a refused handshake. A Yjs
    client refused for its grant first gets the y-protocols ``permission denied``."""
    event = await receive()
    if event["type"] != "websocket.connect":
        return
    accept: dict[str, Any] = {"type": "websocket.accept"}
    if subprotocol is not None:
        accept["subprotocol"] = subprotocol
    await send(accept)
    if kind == "yjs" and status == 403:
        await send({"type": "websocket.send", "bytes": PERMISSION_DENIED})
    code = {401: CloseCode.UNAUTHORIZED, 403: CloseCode.FORBIDDEN}.get(
        status, CloseCode.RATE_LIMITED
    )
    reason = reason.encode("utf-8")[:123].decode("utf-8", "ignore")
    await send({"type": "websocket.close", "code": int(code), "reason": reason})
    with anyio.move_on_after(2.0):
        while (await receive())["type"] != "websocket.disconnect":
            pass


# -- startup ----------------------------------------------------------------------------


def authenticator_from(settings: Any) -> Authenticator:
    """The authenticator ``settings`` describe (open when no secret, JWKS or webhook).

    Raises:
        SettingsError: one line naming the flag at fault (a short secret, an
            unloadable JWKS file, a webhook that is not an http(s) URL).
    """
    from .auth.startup import build_authenticator
    from .auth.tokens import TokenVerifier
    from .settings import SettingsError

    secrets = tuple(s for s in settings.auth_secret if s)
    if secrets:
        try:
            TokenVerifier(secrets)
        except ValueError as exc:
            raise SettingsError(f"--auth-secret: {exc}") from None
    if settings.auth_jwks:
        try:
            TokenVerifier((), settings.auth_jwks)
        except ValueError as exc:
            raise SettingsError(f"--auth-jwks: {exc}") from None
    if settings.auth_webhook and not settings.auth_webhook.startswith(("http://", "https://")):
        raise SettingsError(f"--auth-webhook must be an http(s) URL, got {settings.auth_webhook!r}")
    try:
        return build_authenticator(
            secrets=secrets,
            jwks=settings.auth_jwks or None,
            webhook=settings.auth_webhook or None,
            audience=settings.auth_audience or None,
            issuer=settings.auth_issuer or None,
            leeway=settings.auth_leeway,
            webhook_timeout=settings.auth_webhook_timeout,
            webhook_cache_seconds=settings.auth_webhook_cache_seconds,
        )
    except ValueError as exc:  # pragma: no cover - each part was checked above
        raise SettingsError(f"auth settings: {exc}") from None


def check_open(settings: Any, auth: Authenticator) -> str | None:
    """The open-server rule (:func:`crdt_sync.auth.startup.check_open_policy`).

    Returns:
        The warning to log once at start, ``None`` when auth is on.

    Raises:
        SettingsError: open with ``--require-auth``, or open on a non-loopback
            ``--host`` without ``--allow-open``.
    """
    from .auth.startup import OpenServerRefused, check_open_policy
    from .settings import SettingsError

    try:
        return check_open_policy(
            is_open=auth.open,
            host=settings.host,
            require_auth=settings.require_auth,
            allow_open=settings.allow_open,
        )
    except OpenServerRefused as exc:
        raise SettingsError(str(exc)) from None
