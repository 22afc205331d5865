"""The token of an HTTP request or WebSocket upgrade, from its ASGI scope.

Three places, for the three kinds of client:

- ``?token=<jwt>`` in the query string (y-websocket's ``params`` option, EventSource);
- ``Authorization: Bearer <jwt>`` (HTTP clients, server-side WebSocket clients);
- ``Sec-WebSocket-Protocol`` (browsers, which cannot set headers on a WebSocket and
  should keep the token out of URLs): the client offers the token as a subprotocol
  named ``bearer.<jwt>`` next to the real one, ``crdt-sync``::

      new WebSocket(url, ["crdt-sync", "bearer." + token])

  The server must echo one offered subprotocol in its accept;
  :attr:`ExtractedToken.subprotocol` says which: ``crdt-sync`` if offered, else
  the first other non-token protocol, else (only the token was offered) the token
  entry itself, since a browser fails a handshake whose answer names none.

If more than one place carries a token and they differ, the request is refused as
``malformed`` rather than guessing which one a proxy or a page injected. Nothing here
logs; a caller must not log the token or the raw query string either (see
:mod:`crdt_sync.log_redaction`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl

from .tokens import TokenError

SUBPROTOCOL = "crdt-sync"
BEARER_PREFIX = "bearer."
QUERY_PARAM = "token"

Source = Literal["query", "authorization", "subprotocol"]


@dataclass(frozen=True, slots=True)
class ExtractedToken:
    """What :func:`token_from_scope` found.

    Attributes:
        token: The token, or ``None`` if the request carries none.
        source: Where it came from.
        subprotocol: For a WebSocket that offered subprotocols, the one to echo in
            the accept (``None``: offer none back).
    """

    token: str | None
    source: Source | None
    subprotocol: str | None


def _headers(scope: Mapping[str, Any], name: bytes) -> list[str]:
    return [value.decode("latin-1") for key, value in scope.get("headers", ()) if key == name]


def offered_subprotocols(scope: Mapping[str, Any]) -> list[str]:
    """The subprotocols a WebSocket client offered, in order (all header lines)."""
    if "subprotocols" in scope:
        return [str(p) for p in scope["subprotocols"]]
    offered: list[str] = []
    for line in _headers(scope, b"sec-websocket-protocol"):
        offered.extend(p.strip() for p in line.split(",") if p.strip())
    return offered


def choose_subprotocol(offered: Iterable[str]) -> str | None:
    """The subprotocol to echo: ``crdt-sync``, else a non-token one, else the token's."""
    offered = list(offered)
    if SUBPROTOCOL in offered:
        return SUBPROTOCOL
    plain = [p for p in offered if not p.startswith(BEARER_PREFIX)]
    if plain:
        return plain[0]
    return offered[0] if offered else None


def token_from_scope(scope: Mapping[str, Any]) -> ExtractedToken:
    """Find the token of an ASGI ``http`` or ``websocket`` scope.

    Raises:
        TokenError: ``malformed``: two places (or two ``token=`` parameters, or two
            bearer subprotocols) carry different tokens, or a bearer value is empty.
    """
    found: list[tuple[Source, str]] = []
    query = scope.get("query_string", b"")
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == QUERY_PARAM:
            found.append(("query", value))
    for line in _headers(scope, b"authorization"):
        scheme, _, credentials = line.strip().partition(" ")
        if scheme.lower() == "bearer":
            found.append(("authorization", credentials.strip()))
    offered: list[str] = []
    if scope.get("type") == "websocket":
        offered = offered_subprotocols(scope)
        for proto in offered:
            if proto.startswith(BEARER_PREFIX):
                found.append(("subprotocol", proto[len(BEARER_PREFIX) :]))
    subprotocol = choose_subprotocol(offered)
    if not found:
        return ExtractedToken(None, None, subprotocol)
    if any(not value for _, value in found):
        raise TokenError("malformed", f"empty token in {found[0][0]}")
    if len({value for _, value in found}) > 1:
        raise TokenError("malformed", "different tokens in " + ", ".join(s for s, _ in found))
    source, token = found[0]
    return ExtractedToken(token, source, subprotocol)
