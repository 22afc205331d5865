"""Authenticator: open mode, tokens, webhook, both; 401 versus 403."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import jwt
import pytest

from crdt_sync.auth.authenticator import Authenticator, AuthError
from crdt_sync.auth.principal import Principal
from crdt_sync.auth.tokens import TokenVerifier, issue_token
from crdt_sync.auth.webhook import WebhookAuthenticator
from tests.unit.auth_keys import OLD_SECRET, SECRET, KeyPair, claims, hand_made, http_server, jwks

pytestmark = pytest.mark.anyio


async def refused(auth: Authenticator, token: str | None, doc: str | None, mode: str) -> AuthError:
    with anyio.fail_after(10), pytest.raises(AuthError) as caught:
        await auth.authenticate(token, doc, mode)  # type: ignore[arg-type]
    if token:
        assert token not in str(caught.value)
    return caught.value


async def test_open_mode_is_anonymous_with_or_without_a_token() -> None:
    auth = Authenticator()
    assert auth.open
    assert await auth.authenticate(None, "issue/1", "admin") == Principal.anonymous()
    assert await auth.authenticate("garbage", None, "write") == Principal.anonymous()


async def test_token_within_its_grant_is_admitted() -> None:
    auth = Authenticator(TokenVerifier([SECRET]))
    token = issue_token(SECRET, "alice", "acme", ["issue/*"], "write", 60)
    principal = await auth.authenticate(token, "issue/7", "write")
    assert (principal.org, principal.actor) == ("acme", "alice")
    assert (await auth.authenticate(token, "issue/7", "read")).actor == "alice"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: None, "missing"),
        (lambda: "not-a-jwt", "malformed"),
        (lambda: jwt.encode(claims(), "w" * 40, algorithm="HS256"), "bad_signature"),
        (lambda: jwt.encode(claims(), OLD_SECRET, algorithm="HS256"), "bad_signature"),
        (lambda: hand_made({"alg": "none"}, claims()), "bad_signature"),
        (
            lambda: jwt.encode(claims(exp=int(time.time()) - 5), SECRET, algorithm="HS256"),
            "expired",
        ),
        (lambda: jwt.encode(claims(org=""), SECRET, algorithm="HS256"), "invalid_claims"),
    ],
)
async def test_bad_tokens_are_401(make, reason: str) -> None:
    error = await refused(Authenticator(TokenVerifier([SECRET])), make(), "issue/1", "read")
    assert (error.status, error.reason, error.close_code) == (401, reason, 4401)


async def test_doc_outside_the_grant_or_mode_too_low_is_403() -> None:
    auth = Authenticator(TokenVerifier([SECRET]))
    reader = issue_token(SECRET, "bob", "acme", ["issue/*"], "read", 60)
    for doc, mode in (("board/1", "read"), ("issue/1/sub", "read"), ("issue/1", "write")):
        error = await refused(auth, reader, doc, mode)
        assert (error.status, error.reason, error.close_code) == (403, "forbidden", 4403)
    error = await refused(auth, reader, None, "admin")
    assert error.status == 403


async def test_unknown_kid_is_401(tmp_path: Path) -> None:
    pair = KeyPair("ec", "ec-1")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(pair)))
    auth = Authenticator(TokenVerifier(jwks=str(path)))
    assert (await auth.authenticate(pair.sign(claims()), "issue/1", "write")).actor == "alice"
    error = await refused(auth, pair.sign(claims(), kid="gone"), "issue/1", "read")
    assert (error.status, error.reason) == (401, "unknown_kid")


async def test_jwks_url_verification_runs_off_the_event_loop() -> None:
    pair = KeyPair("rsa", "r")
    body = json.dumps(jwks(pair)).encode()
    with http_server(lambda path, _: (200, body)) as (url, _):
        auth = Authenticator(TokenVerifier(jwks=url))
        with anyio.fail_after(10):
            principal = await auth.authenticate(pair.sign(claims()), "issue/1", "read")
    assert principal.actor == "alice"


async def test_webhook_only() -> None:
    def decide(path: str, body: bytes) -> tuple[int, bytes]:
        asked = json.loads(body)
        if asked["token"] != "opaque-session":
            return 403, b"{}"
        return 200, json.dumps({"sub": "carol", "org": "acme", "docs": ["wiki/**"]}).encode()

    with http_server(decide) as (url, _):
        auth = Authenticator(webhook=WebhookAuthenticator(url))
        try:
            with anyio.fail_after(10):
                principal = await auth.authenticate("opaque-session", "wiki/a/b", "read")
            assert principal.actor == "carol"
            # the webhook's grant is read-only (default mode): write is 403
            assert (await refused(auth, "opaque-session", "wiki/a", "write")).status == 403
            assert (await refused(auth, "other", "wiki/a", "read")).status == 403
            assert (await refused(auth, None, "wiki/a", "read")).reason == "missing"
        finally:
            await auth.aclose()


async def test_webhook_down_denies() -> None:
    with http_server(lambda path, _: (503, b"{}")) as (url, _):
        auth = Authenticator(webhook=WebhookAuthenticator(url))
        try:
            error = await refused(auth, "tok", "issue/1", "read")
        finally:
            await auth.aclose()
    assert (error.status, error.reason) == (401, "unavailable")


async def test_with_both_a_valid_jwt_skips_the_webhook_and_others_ask_it() -> None:
    with http_server(lambda path, _: (200, json.dumps({"sub": "hooked"}).encode())) as (url, seen):
        auth = Authenticator(TokenVerifier([SECRET]), WebhookAuthenticator(url))
        try:
            with anyio.fail_after(10):
                jwt_token = issue_token(SECRET, "alice", docs=["**"], mode="read", ttl_seconds=60)
                assert (await auth.authenticate(jwt_token, "d", "read")).actor == "alice"
                assert seen == []
                assert (await auth.authenticate("opaque", "d", "read")).actor == "hooked"
                assert len(seen) == 1
        finally:
            await auth.aclose()


async def test_unknown_mode_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        await Authenticator().authenticate(None, None, "root")  # type: ignore[arg-type]
