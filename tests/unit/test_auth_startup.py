"""Running open: allowed on loopback with a warning, refused elsewhere unless --allow-open."""

from __future__ import annotations

import anyio
import pytest

from crdt_sync.auth.principal import Grant, Principal
from crdt_sync.auth.startup import (
    OPEN_WARNING,
    OpenServerRefused,
    build_authenticator,
    check_open_policy,
    is_loopback,
    secrets_from,
)
from crdt_sync.auth.tokens import issue_token
from tests.unit.auth_keys import OLD_SECRET, SECRET


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.5.6.7", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_open_on_loopback_warns() -> None:
    warning = check_open_policy(
        is_open=True, host="127.0.0.1", require_auth=False, allow_open=False
    )
    assert warning == OPEN_WARNING


def test_open_on_a_public_address_is_refused_unless_allowed() -> None:
    with pytest.raises(OpenServerRefused, match="--allow-open"):
        check_open_policy(is_open=True, host="0.0.0.0", require_auth=False, allow_open=False)
    warning = check_open_policy(is_open=True, host="0.0.0.0", require_auth=False, allow_open=True)
    assert warning == OPEN_WARNING


def test_require_auth_refuses_open_everywhere() -> None:
    for host in ("127.0.0.1", "0.0.0.0"):
        with pytest.raises(OpenServerRefused, match="--require-auth"):
            check_open_policy(is_open=True, host=host, require_auth=True, allow_open=True)


def test_with_auth_on_there_is_nothing_to_say() -> None:
    assert (
        check_open_policy(is_open=False, host="0.0.0.0", require_auth=True, allow_open=False)
        is None
    )


def test_secrets_flags_win_over_the_comma_separated_variable() -> None:
    assert secrets_from(["a", " b "], "c,d") == ("a", "b")
    assert secrets_from(None, " c , ,d,") == ("c", "d")
    assert secrets_from([], None) == ()


@pytest.mark.anyio
async def test_build_authenticator_open_and_with_rotated_secrets() -> None:
    assert build_authenticator().open
    auth = build_authenticator(secrets=[SECRET, OLD_SECRET], audience="crdt")
    assert not auth.open
    token = issue_token(OLD_SECRET, "alice", "acme", ["**"], "write", 60, aud="crdt")
    with anyio.fail_after(5):
        principal = await auth.authenticate(token, "d", "write")
    assert principal.limit_key("10.0.0.1") == ("actor", "acme", "alice")
    with pytest.raises(ValueError):
        build_authenticator(secrets=["short"])


def test_limit_key_is_the_actor_or_the_ip_while_anonymous() -> None:
    assert Principal.anonymous().limit_key("10.0.0.9") == ("ip", "10.0.0.9")
    assert Principal("acme", "bob", Grant(("**",), "read")).limit_key("10.0.0.9") == (
        "actor",
        "acme",
        "bob",
    )
    # a token whose sub is "anonymous" is still counted as that actor, not by IP
    named = Principal("default", "anonymous", Grant(("**",), "read"))
    assert not named.is_anonymous
    assert named.limit_key("10.0.0.9") == ("actor", "default", "anonymous")
    # the same actor name in two orgs is two keys
    assert Principal("a", "bob").limit_key(None) != Principal("b", "bob").limit_key(None)
