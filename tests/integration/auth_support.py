"""Tokens, bad tokens and bounded probes shared by the auth end-to-end tests.

Every probe talks to a real ``crdt-sync serve`` on 127.0.0.1 and is bounded in time:
``ws_outcome`` says how a WebSocket ended (its close code, the HTTP status of a
refused handshake, or ``"open"`` if the server kept it open), ``sse_status`` reads
only the status line of an SSE stream.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import jwt
import websockets
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.exceptions import InvalidStatus

from crdt_sync.auth.tokens import issue_token

SECRET = "matrix-secret-" + secrets.token_hex(16)  # >= 32 bytes
NEW_SECRET = "rotated-secret-" + secrets.token_hex(16)
OTHER_SECRET = "not-the-servers-secret-" + secrets.token_hex(16)
KID = "test-key-1"

OPEN = "open"  # ws_outcome: the server kept the connection open


def token(
    sub: str = "alice",
    org: str = "orga",
    docs: tuple[str, ...] = ("**",),
    mode: str = "write",
    ttl: float = 600,
    secret: str = SECRET,
    **extra: Any,
) -> str:
    """An HS256 token made exactly as ``crdt-sync token`` makes one."""
    return issue_token(secret, sub, org, docs, mode, ttl, **extra)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(good: str, **claims: Any) -> str:
    """``good`` with its payload rewritten (``org``, ``mode``...) and its old signature."""
    header, payload, signature = good.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body.update(claims)
    return ".".join([header, b64url(json.dumps(body).encode()), signature])


def unsigned(**claims: Any) -> str:
    """An ``alg: none`` token: no signature at all."""
    body = {"sub": "alice", "org": "orga", "docs": ["**"], "mode": "admin"}
    body |= {"exp": int(time.time()) + 600, **claims}
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(body).encode())}."


class RsaKeys:
    """An RSA key published in a JWKS file under :data:`KID`, and one that is not."""

    def __init__(self, directory: Path) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk |= {"kid": KID, "use": "sig", "alg": "RS256"}
        self.path = directory / "jwks.json"
        self.path.write_text(json.dumps({"keys": [jwk]}))

    def sign(self, kid: str = KID, key: Any = None, **claims: Any) -> str:
        body = {"sub": "alice", "org": "orga", "docs": ["**"], "mode": "write"}
        body |= {"exp": int(time.time()) + 600, **claims}
        return jwt.encode(body, key or self.key, algorithm="RS256", headers={"kid": kid})


def bad_tokens(keys: RsaKeys) -> dict[str, str | None]:
    """Every kind of token that must get 401 / 4401, by name."""
    now = time.time()
    good = token()
    return {
        "missing": None,
        "forged": forged(good, org="orgb"),
        "forged_mode": forged(token(mode="read"), mode="admin"),
        "expired": issue_token(SECRET, "alice", "orga", ("**",), "write", 60, now=now - 3600),
        "wrong_secret": token(secret=OTHER_SECRET),
        "malformed": "not-a-jwt",
        "malformed_segments": "a.b.c",
        "alg_none": unsigned(),
        "wrong_kid": keys.sign(kid="no-such-kid"),
        "jwks_wrong_key": keys.sign(key=keys.stranger),
    }


def bearer(tok: str | None) -> dict[str, str]:
    return {} if tok is None else {"Authorization": f"Bearer {tok}"}


def ws_base(server: Any) -> str:
    return server.url.replace("http://", "ws://", 1)


async def ws_outcome(
    url: str, tok: str | None = None, *, via: str = "query", hold: float = 1.0
) -> int | str:
    """How a WebSocket to ``url`` ends, the token sent ``via`` query, header or
    subprotocol: the close code the server sent, ``"http 4xx"`` for a refused
    handshake, or :data:`OPEN` if it is still open after ``hold`` s."""
    headers: dict[str, str] = {}
    subprotocols: list[Any] | None = None
    if tok is not None and via == "query":
        url += ("&" if "?" in url else "?") + "token=" + tok
    elif tok is not None and via == "subprotocol":  # what a browser does
        subprotocols = ["crdt-sync", "bearer." + tok]
    elif tok is not None:
        headers = bearer(tok)
    try:
        with anyio.fail_after(10):
            ws = await websockets.connect(
                url, additional_headers=headers, subprotocols=subprotocols, open_timeout=5
            )
    except InvalidStatus as exc:
        return f"http {exc.response.status_code}"
    try:
        with anyio.move_on_after(hold):
            while True:
                await ws.recv()
        return OPEN
    except websockets.ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else "closed without a close frame"
    finally:
        with anyio.move_on_after(5):
            await ws.close()


async def sse_status(http: httpx.AsyncClient, tok: str | None, path: str = "/sync/v1/events"):
    """The status of ``GET /sync/v1/events`` (only its head is read)."""
    with anyio.fail_after(10):
        async with http.stream("GET", path, headers=bearer(tok)) as response:
            return response.status_code


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)
