"""Browser-facing defences in front of the app: Origin, CORS, Content-Type, Host.

A WebSocket handshake and a "simple" cross-site request (a form post, a ``fetch``
with ``Content-Type: text/plain``) are not stopped by the browser's same-origin
policy; only the server can refuse them. :class:`BrowserGuard` is an ASGI
middleware that does, in this order:

1. **Host** (DNS rebinding), only while the server is bound to a loopback address:
   the ``Host`` header must name a loopback host (``localhost``, ``*.localhost``, a
   loopback IP literal such as ``127.0.0.1`` or ``[::1]``), any port (a port check
   adds nothing against rebinding and would break ``ssh -L`` forwarding). Else HTTP
   421 ``host_not_allowed``; a WebSocket handshake is refused the same way.
2. **Origin**: a request without ``Origin`` (curl, SDKs, y-websocket in Node) is
   not from a browser page and passes. A WebSocket handshake whose ``Origin`` is
   not allowed is refused before accept (HTTP 403 ``origin_not_allowed`` where the
   server offers ``websocket.http.response``, else ``websocket.close`` 4403). An
   HTTP request that changes state (POST, PUT, PATCH, DELETE) from a disallowed
   origin gets 403 ``origin_not_allowed``; reads just get no CORS headers, so the
   browser keeps the response from the page.
3. **CORS**: a preflight (``OPTIONS`` with ``Access-Control-Request-Method``) from
   an allowed origin is answered here (204); every response to an allowed origin
   carries ``Access-Control-Allow-Origin: <origin>``; every response ``Vary: Origin``.
4. **JSON bodies**: a POST/PUT/PATCH to a JSON endpoint (``/sync/v1/mutations``,
   ``/admin/...``) must say ``Content-Type: application/json`` (415
   ``unsupported_media_type`` otherwise). ``POST /docs/{doc}/update`` takes the raw
   binary update with any Content-Type (``application/octet-stream`` or none) and
   stays so: its cross-site protection is the Origin check above.

Allowed origins: the request's own origin (``Origin`` naming the ``Host`` it was
sent to), ``http://127.0.0.1:PORT`` / ``http://localhost:PORT`` / ``http://[::1]:PORT``,
and, while bound to loopback and no list is configured, every loopback origin
(``http(s)://localhost:*``, ``http(s)://127.0.0.1:*``, ...). A configured list
(``--allowed-origins``, comma-separated) replaces the loopback wildcard and adds
its entries; ``*`` allows every origin (``null`` included); ``null`` alone allows
the opaque origin of sandboxed frames and ``file://`` pages.

Every refusal is one WARNING line with the path (never the query, which may hold a
token), the origin and host (``%r``) and the peer. WebSocket handshakes that pass
are handed on with the server's own ``send``, so the endpoints' direct socket
writes (``crdt_sync.asgi.direct_writer``) keep working.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Awaitable, Iterable
from typing import Any
from urllib.parse import urlsplit

from .asgi import deny_handshake, peer, route_path

log = logging.getLogger(__name__)

#: Close code of a WebSocket handshake refused where no HTTP response can be sent
#: (the ``websocket.http.response`` extension is missing); 4000 + HTTP 403.
ORIGIN_REFUSED_CLOSE = 4403

#: State-changing methods: refused from a disallowed origin.
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Methods whose body must be JSON on a JSON endpoint.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
#: Paths whose bodies are JSON; an entry ending in ``/`` is a prefix.
JSON_PATHS = ("/sync/v1/mutations", "/admin/")

ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE"
ALLOW_HEADERS = "Authorization, Content-Type, X-Client-Id, Last-Event-ID"
EXPOSE_HEADERS = "Retry-After"
#: How long a browser may cache a preflight answer (seconds).
PREFLIGHT_MAX_AGE = 600

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class InvalidOrigin(ValueError):
    """An ``--allowed-origins`` entry that is not ``*``, ``null`` or scheme://host[:port]."""


def _split_host(host: str) -> tuple[str, int | None]:
    """``example.com:8080`` -> (``example.com``, 8080); ``[::1]:1`` -> (``[::1]``, 1)."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise ValueError(f"unclosed [ in {host!r}")
        name, rest = host[: end + 1], host[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"junk after ] in {host!r}")
        port_text = rest[1:] if rest else ""
    else:
        name, _, port_text = host.partition(":")
    if not name:
        raise ValueError("empty host")
    if port_text == "":
        return name, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port in {host!r}")
    return name, int(port_text)


def normalize_origin(origin: str) -> str:
    """``HTTP://Example.com:80/`` -> ``http://example.com``: lowercase, no default
    port, no path. ``null`` stays ``null``.

    Raises:
        InvalidOrigin: not ``null`` and not ``scheme://host[:port]``.
    """
    origin = origin.strip()
    if origin.lower() == "null":
        return "null"
    parts = urlsplit(origin)
    if not parts.scheme or not parts.netloc or parts.path not in ("", "/"):
        raise InvalidOrigin(f"origin {origin!r} is not scheme://host[:port]")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise InvalidOrigin(f"origin {origin!r} is not scheme://host[:port]")
    scheme = parts.scheme.lower()
    try:
        name, port = _split_host(parts.netloc)
    except ValueError as exc:
        raise InvalidOrigin(f"origin {origin!r}: {exc}") from None
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{name}"
    return f"{scheme}://{name}:{port}"


def parse_allowed_origins(raw: str | Iterable[str]) -> list[str]:
    """``--allowed-origins`` / ``CRDT_SYNC_ALLOWED_ORIGINS`` as a list of normalized
    origins: comma-separated (or already a list), blanks dropped, ``*`` kept.

    Raises:
        InvalidOrigin: an entry is not ``*``, ``null`` or an origin.
    """
    entries = raw.split(",") if isinstance(raw, str) else list(raw)
    found: list[str] = []
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        value = "*" if entry == "*" else normalize_origin(entry)
        if value not in found:
            found.append(value)
    return found


def is_loopback_name(name: str) -> bool:
    """``localhost``, ``*.localhost`` (RFC 6761: always loopback) or a loopback IP
    literal (``127.0.0.0/8``, ``[::1]``)."""
    name = name.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def _header(scope: dict[str, Any], name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in scope.get("headers", ()) if k == name]


class BrowserGuard:
    """ASGI middleware: the browser-facing checks described in the module docstring.

    Args:
        app: The ASGI app behind the guard.
        allowed_origins: Configured origins (``parse_allowed_origins``); empty: the
            defaults (own origin, plus every loopback origin while bound to loopback).
        bound_host: The address the server listens on (``--host``).
        port: The port it listens on (``--port``; 0: not known up front).
        json_paths: Paths whose POST/PUT/PATCH bodies must be JSON (``/``-suffixed: prefix).
    """

    def __init__(
        self,
        app: Any,
        allowed_origins: Iterable[str],
        bound_host: str,
        port: int,
        *,
        json_paths: Iterable[str] = JSON_PATHS,
    ) -> None:
        self.app = app
        configured = parse_allowed_origins(list(allowed_origins))
        self.allow_any = "*" in configured
        self.loopback = is_loopback_name(bound_host) if bound_host else False
        # The loopback wildcard is the default only: a configured list replaces it.
        self.allow_loopback_origins = self.loopback and not configured
        own: set[str] = set()
        if port:
            own = {f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"}
        self.allowed = own | {o for o in configured if o != "*"}
        self.json_paths = tuple(json_paths)

    # -- decisions (pure) ---------------------------------------------------------

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        """Whether a page of ``origin`` may use this server, reached as ``host``."""
        if self.allow_any:
            return True
        try:
            normal = normalize_origin(origin)
        except InvalidOrigin:
            return False
        if normal in self.allowed:
            return True
        if normal == "null":
            return False
        scheme, netloc = normal.split("://", 1)
        try:
            name, port = _split_host(netloc)
        except ValueError:
            return False
        default = _DEFAULT_PORTS.get(scheme)
        if host is not None:
            # Same origin: the page was served by the host this request went to
            # (the scheme may differ behind a TLS-terminating proxy).
            try:
                host_name, host_port = _split_host(host)
            except ValueError:
                host_name, host_port = "", None
            if host_name == name and (host_port or default) == (port or default):
                return True
        if self.allow_loopback_origins and scheme in ("http", "https"):
            return is_loopback_name(name)
        return False

    def host_allowed(self, host: str | None) -> bool:
        """While bound to loopback, ``Host`` must name a loopback host (rebinding)."""
        if not self.loopback or host is None:
            return True  # no Host at all is no browser (every browser sends one)
        try:
            name, _ = _split_host(host)
        except ValueError:
            return False
        return is_loopback_name(name)

    def _is_json_path(self, path: str) -> bool:
        for entry in self.json_paths:
            if path == entry or (entry.endswith("/") and path.startswith(entry)):
                return True
        return False

    # -- ASGI ---------------------------------------------------------------------

    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        """The request's handler, returned rather than awaited here: an open WebSocket
        does not keep this frame as well (about 0.4 KiB of every idle connection)."""
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            return self.app(scope, receive, send)
        hosts = _header(scope, b"host")
        origins = _header(scope, b"origin")
        host = hosts[0] if len(hosts) == 1 else None
        if len(hosts) > 1 or not self.host_allowed(host):
            why = "several Host headers" if len(hosts) > 1 else "Host is not a loopback name"
            return self._refuse(scope, receive, send, 421, "host_not_allowed", why, origins, hosts)
        origin = origins[0] if len(origins) == 1 else None
        allowed = origin is not None and self.origin_allowed(origin, host)
        if len(origins) > 1:
            return self._refuse(
                scope,
                receive,
                send,
                403,
                "origin_not_allowed",
                "several Origin headers",
                origins,
                hosts,
            )
        if kind == "websocket":
            if origin is not None and not allowed:
                detail = "this page's origin may not open WebSockets here"
                return self._refuse(
                    scope, receive, send, 403, "origin_not_allowed", detail, origins, hosts
                )
            return self.app(scope, receive, send)  # the server's own send: direct writes
        method = scope.get("method", "GET")
        if origin is not None and not allowed:
            if method in UNSAFE_METHODS or method == "OPTIONS":
                detail = f"{method} from this page's origin is not allowed"
                return self._refuse(
                    scope, receive, send, 403, "origin_not_allowed", detail, origins, hosts
                )
        if allowed and method == "OPTIONS" and _header(scope, b"access-control-request-method"):
            return self._preflight(send, origin)  # type: ignore[arg-type]
        if method in BODY_METHODS and self._is_json_path(route_path(scope)):
            content_type = (_header(scope, b"content-type") or [""])[0]
            media = content_type.split(";", 1)[0].strip().lower()
            if media != "application/json":
                detail = f"{method} {route_path(scope)} takes Content-Type: application/json"
                return self._refuse(
                    scope,
                    receive,
                    send,
                    415,
                    "unsupported_media_type",
                    detail,
                    origins,
                    hosts,
                    extra=[("content_type", content_type)],
                )
        return self.app(scope, receive, self._cors_send(send, origin if allowed else None))

    @staticmethod
    def _cors_headers(origin: str | None) -> list[tuple[bytes, bytes]]:
        if origin is None:
            return []
        return [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-expose-headers", EXPOSE_HEADERS.encode()),
        ]

    def _cors_send(self, send: Any, origin: str | None) -> Any:
        extra = self._cors_headers(origin)

        async def cors_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"vary"]
                vary = [v for k, v in message.get("headers", ()) if k.lower() == b"vary"]
                if not any(b"origin" in v.lower() or v.strip() == b"*" for v in vary):
                    vary.append(b"Origin")
                headers.append((b"vary", b", ".join(vary)))
                message = {**message, "headers": headers + extra}
            await send(message)

        return cors_send

    async def _preflight(self, send: Any, origin: str) -> None:
        headers = [
            *self._cors_headers(origin),
            (b"access-control-allow-methods", ALLOW_METHODS.encode()),
            (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
            (b"access-control-max-age", str(PREFLIGHT_MAX_AGE).encode()),
            (b"vary", b"Origin"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _refuse(
        self,
        scope: dict[str, Any],
        receive: Any,
        send: Any,
        status: int,
        error: str,
        detail: str,
        origins: list[str],
        hosts: list[str],
        *,
        extra: list[tuple[str, str]] = (),  # type: ignore[assignment]
    ) -> None:
        kind = scope["type"]
        what = "ws" if kind == "websocket" else scope.get("method", "?")
        origin: Any = origins[0] if len(origins) == 1 else (origins or None)
        host: Any = hosts[0] if len(hosts) == 1 else (hosts or None)
        more = "".join(f" {k}=%r" % (v,) for k, v in extra)
        log.warning(
            "refused %s %r -> %d %s: %s; origin=%r host=%r peer=%s%s",
            what,
            route_path(scope)[:200],
            status,
            error,
            detail,
            origin,
            host,
            peer(scope),
            more,
        )
        body = json.dumps({"error": error, "detail": detail}).encode("utf-8")
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"vary", b"Origin"),
        ]
        if kind == "http":
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        event = await receive()  # the handshake's websocket.connect
        if event["type"] != "websocket.connect":
            return
        await deny_handshake(
            scope, receive, send, status, headers, body, error, fallback_code=ORIGIN_REFUSED_CLOSE
        )
