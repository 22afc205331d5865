"""``crdt-sync token``: the real console command prints a token the verifier accepts."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import pytest

from crdt_sync.auth.principal import Grant
from crdt_sync.auth.token_command import parse_ttl
from crdt_sync.auth.tokens import TokenError, TokenVerifier
from tests.unit.auth_keys import OLD_SECRET, SECRET


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "CRDT_SYNC_AUTH_SECRET"}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "crdt_sync", "token", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        check=False,
    )


def test_prints_one_token_the_verifier_accepts() -> None:
    before = time.time()
    out = run(
        "--sub",
        "alice",
        "--org",
        "acme",
        "--docs",
        "issue/*",
        "--mode",
        "write",
        "--ttl",
        "1h",
        env={"CRDT_SYNC_AUTH_SECRET": f"{SECRET},{OLD_SECRET}"},
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1
    principal = TokenVerifier([SECRET]).verify(lines[0])
    assert (principal.org, principal.actor) == ("acme", "alice")
    assert principal.grant == Grant(("issue/*",), "write")
    assert principal.expires_at is not None
    assert before + 3590 <= principal.expires_at <= time.time() + 3601
    # signed with the first listed secret: a server that rotated to it alone accepts it
    with pytest.raises(TokenError):
        TokenVerifier([OLD_SECRET]).verify(lines[0])


def test_secret_flag_audience_issuer_and_repeated_docs() -> None:
    secret = "k" * 48
    out = run(
        "--sub",
        "bob",
        "--secret",
        secret,
        "--docs",
        "a/*",
        "--docs",
        "b/**",
        "--aud",
        "crdt",
        "--iss",
        "idp",
        "--ttl",
        "30s",
    )
    assert out.returncode == 0, out.stderr
    principal = TokenVerifier([secret], audience="crdt", issuer="idp").verify(out.stdout.strip())
    assert principal.org == "default"
    assert principal.grant == Grant(("a/*", "b/**"), "read")


def test_without_a_secret_it_fails_with_a_message() -> None:
    out = run("--sub", "alice")
    assert out.returncode == 2 and out.stdout == ""
    assert "CRDT_SYNC_AUTH_SECRET" in out.stderr


def test_short_secret_and_bad_ttl_are_refused() -> None:
    out = run("--sub", "alice", "--secret", "short")
    assert out.returncode == 2 and "32 bytes" in out.stderr
    out = run("--sub", "alice", "--secret", SECRET, "--ttl", "1y")
    assert out.returncode == 2 and "ttl" in out.stderr


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("1h", 3600), ("7d", 604800), ("45", 45), (" 2h ", 7200)],
)
def test_parse_ttl(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "1w", "-5m", "1.5h", "h", "400d"])
def test_parse_ttl_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_ttl(text)
