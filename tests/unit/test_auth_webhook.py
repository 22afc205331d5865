"""WebhookAuthenticator against a real HTTP server on 127.0.0.1: answers, cache, failing closed."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import anyio
import pytest

from crdt_sync.auth.principal import Grant, Principal
from crdt_sync.auth.webhook import WebhookAuthenticator, WebhookDenied
from tests.unit.auth_keys import http_server

pytestmark = pytest.mark.anyio


def answer(status: int, body: Any) -> tuple[int, bytes]:
    return status, body if isinstance(body, bytes) else json.dumps(body).encode()


def grant_for(token: str, exp: float | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"sub": token.removeprefix("tok-"), "org": "acme"}
    body.update({"docs": ["issue/*"], "mode": "write"})
    if exp is not None:
        body["exp"] = exp
    return body


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def denied(hook: WebhookAuthenticator, token: str = "tok-x") -> WebhookDenied:
    with anyio.fail_after(10), pytest.raises(WebhookDenied) as caught:
        await hook.check(token, "issue/1", "write")
    assert token not in str(caught.value)
    return caught.value


async def test_allowed_answer_becomes_the_principal_and_the_request_is_as_documented() -> None:
    exp = time.time() + 600
    with http_server(lambda path, body: answer(200, grant_for(json.loads(body)["token"], exp))) as (
        url,
        seen,
    ):
        hook = WebhookAuthenticator(url + "/auth")
        try:
            with anyio.fail_after(10):
                principal = await hook.check("tok-alice", "issue/1", "write")
        finally:
            await hook.aclose()
    assert principal == Principal("acme", "alice", Grant(("issue/*",), "write"), exp)
    assert json.loads(seen[0]) == {"token": "tok-alice", "doc": "issue/1", "mode": "write"}


async def test_yes_is_cached_briefly_and_not_past_exp() -> None:
    clock = Clock()
    exp = clock.now + 10
    with http_server(lambda path, body: answer(200, grant_for(json.loads(body)["token"], exp))) as (
        url,
        seen,
    ):
        hook = WebhookAuthenticator(url, cache_seconds=30, clock=clock)
        try:
            with anyio.fail_after(10):
                await hook.check("tok-a", "issue/1", "write")
                await hook.check("tok-a", "issue/1", "write")
                assert len(seen) == 1 and hook.cache_hits == 1
                await hook.check("tok-a", "issue/2", "write")  # another doc: asked again
                assert len(seen) == 2
                clock.now += 11  # past exp (sooner than the 30 s cache): the webhook is asked
                with pytest.raises(WebhookDenied) as caught:
                    await hook.check("tok-a", "issue/1", "write")
                assert caught.value.reason == "expired"
                assert len(seen) == 3
        finally:
            await hook.aclose()


async def test_cache_expires_after_cache_seconds_and_is_bounded() -> None:
    clock = Clock()
    with http_server(lambda path, body: answer(200, grant_for(json.loads(body)["token"]))) as (
        url,
        seen,
    ):
        hook = WebhookAuthenticator(url, cache_seconds=30, cache_size=3, clock=clock)
        try:
            with anyio.fail_after(10):
                for i in range(5):
                    await hook.check(f"tok-{i}", None, "read")
                assert len(hook._cache) == 3
                assert all("tok-" not in key[0] for key in hook._cache), "keys hold digests"
                await hook.check("tok-4", None, "read")
                assert len(seen) == 5
                clock.now += 31
                await hook.check("tok-4", None, "read")
                assert len(seen) == 6
        finally:
            await hook.aclose()


@pytest.mark.parametrize(
    ("status", "body", "expected_status", "expected_reason"),
    [
        (401, {"error": "no"}, 401, "invalid_claims"),
        (403, {"error": "no"}, 403, "invalid_claims"),
        (500, {"sub": "alice"}, 401, "unavailable"),
        (302, {"sub": "alice"}, 401, "unavailable"),
        (200, b"not json", 401, "unavailable"),
        (200, ["alice"], 401, "unavailable"),
        (200, {"org": "acme"}, 401, "unavailable"),
        (200, {"sub": "alice", "mode": "owner"}, 401, "unavailable"),
        (200, {"sub": "alice", "exp": 1000}, 401, "expired"),
        (200, b"x" * 70_000, 401, "unavailable"),
    ],
)
async def test_failures_deny(
    status: int, body: Any, expected_status: int, expected_reason: str
) -> None:
    with http_server(lambda path, _: answer(status, body)) as (url, _):
        hook = WebhookAuthenticator(url)
        try:
            error = await denied(hook)
        finally:
            await hook.aclose()
    assert (error.status, error.reason) == (expected_status, expected_reason)


async def test_refusals_are_not_cached() -> None:
    with http_server(lambda path, _: answer(403, {})) as (url, seen):
        hook = WebhookAuthenticator(url)
        try:
            await denied(hook)
            await denied(hook)
        finally:
            await hook.aclose()
    assert len(seen) == 2


async def test_timeout_denies() -> None:
    release = threading.Event()

    def slow(path: str, body: bytes) -> tuple[int, bytes]:
        release.wait(timeout=10)
        return answer(200, {"sub": "late"})

    with http_server(slow) as (url, _):
        hook = WebhookAuthenticator(url, timeout=0.2)
        try:
            error = await denied(hook)
        finally:
            release.set()
            await hook.aclose()
    assert error.reason == "unavailable"


async def test_connection_refused_denies() -> None:
    with http_server(lambda path, _: answer(200, {})) as (url, _):
        pass  # the server is gone: nothing listens on that port now
    hook = WebhookAuthenticator(url, timeout=2)
    try:
        error = await denied(hook)
    finally:
        await hook.aclose()
    assert error.reason == "unavailable"
