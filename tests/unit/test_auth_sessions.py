"""The session registry: revocation closes exactly the matching live sessions."""

from __future__ import annotations

import pytest

from crdt_sync.auth.principal import Grant, Principal, principal_of, set_principal
from crdt_sync.auth.sessions import REVOKED_CLOSE_CODE, Sessions


def _principal(org: str, actor: str) -> Principal:
    return Principal(org, actor, Grant(("**",), "write"))


def test_revoke_closes_only_matching_sessions_of_the_org() -> None:
    sessions = Sessions()
    closed: list[tuple[str, int]] = []

    def closer(name: str):
        return lambda code, reason: closed.append((name, code))

    sessions.register(_principal("acme", "alice"), "issue/1", closer("a1"))
    sessions.register(_principal("acme", "alice"), None, closer("a-feed"))
    sessions.register(_principal("acme", "bob"), "issue/1", closer("b1"))
    sessions.register(_principal("other", "alice"), "issue/1", closer("other-a1"))

    assert sessions.revoke(org="acme", sub="alice") == 2
    assert sorted(closed) == [("a-feed", REVOKED_CLOSE_CODE), ("a1", REVOKED_CLOSE_CODE)]
    closed.clear()
    assert sessions.revoke(org="acme", doc="issue/1") == 1
    assert closed == [("b1", REVOKED_CLOSE_CODE)]
    closed.clear()
    assert sessions.revoke(org="acme") == 0  # all of acme's are gone already
    assert len(sessions) == 1
    assert sessions.revoke(org="other") == 1
    assert closed == [("other-a1", REVOKED_CLOSE_CODE)]


def test_unregistered_and_updated_sessions() -> None:
    sessions = Sessions()
    closed: list[int] = []
    s = sessions.register(_principal("acme", "alice"), None, lambda c, r: closed.append(c))
    s = sessions.update(s, _principal("acme", "carol"))
    assert sessions.revoke(org="acme", sub="alice") == 0
    sessions.unregister(s)
    assert sessions.revoke(org="acme", sub="carol") == 0
    assert closed == []


def test_principal_of_refuses_a_scope_that_bypassed_the_front_door() -> None:
    scope: dict = {"type": "http"}
    with pytest.raises(RuntimeError, match="front door"):
        principal_of(scope)
    p = _principal("acme", "alice")
    set_principal(scope, p)
    assert principal_of(scope) is p


def test_revoking_a_doc_closes_the_feeds_whose_grant_covers_it() -> None:
    sessions = Sessions()
    closed: list[str] = []
    everything = Principal("acme", "alice", Grant(("**",), "read"))
    issues = Principal("acme", "bob", Grant(("issue/*",), "read"))
    notes = Principal("acme", "carol", Grant(("note/*",), "read"))
    for name, who in (("all", everything), ("issues", issues), ("notes", notes)):
        sessions.register(who, None, lambda code, reason, name=name: closed.append(name))
    assert sessions.revoke(org="acme", doc="issue/7") == 2
    assert sorted(closed) == ["all", "issues"]
