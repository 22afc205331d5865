"""Grant globs and modes; the anonymous principal."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt_sync.auth.principal import Grant, Principal, glob_matches, mode_rank


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("issue/*", "issue/1", True),
        ("issue/*", "issue/", True),
        ("issue/*", "issue/1/comments", False),
        ("issue/*", "issues/1", False),
        ("issue/*", "other/issue/1", False),
        ("issue/**", "issue/1/comments", True),
        ("**", "a/b/c", True),
        ("*", "plain", True),
        ("*", "a/b", False),
        ("issue/?", "issue/7", True),
        ("issue/?", "issue/77", False),
        ("issue/?", "issue//", False),
        ("wiki/**/index", "wiki/a/b/index", True),
        ("notes/[x]", "notes/[x]", True),
        ("notes/[x]", "notes/x", False),
        ("a.b", "aXb", False),
        ("Issue/*", "issue/1", False),
        ("héllo/*", "héllo/wörld", True),
    ],
)
def test_glob_star_stops_at_slash_and_double_star_crosses_it(
    pattern: str, name: str, expected: bool
) -> None:
    assert glob_matches(pattern, name) is expected


names = st.text(alphabet="ab/.", max_size=12)


@given(name=names)
def test_double_star_matches_every_name(name: str) -> None:
    assert glob_matches("**", name)


@given(pattern=st.text(alphabet="ab/*", max_size=8), name=names)
def test_single_star_agrees_with_fnmatch_on_names_without_slash(pattern: str, name: str) -> None:
    """Without '/' and '**' the syntax is fnmatch's (case-sensitive)."""
    if "/" in name or "/" in pattern or "**" in pattern:
        return
    assert glob_matches(pattern, name) is fnmatch.fnmatchcase(name, pattern)


def test_modes_nest_read_write_admin() -> None:
    read, write, admin = (Grant(("**",), m) for m in ("read", "write", "admin"))
    assert read.allows("d", "read") and not read.allows("d", "write")
    assert write.allows("d", "write") and not write.allows("d", "admin")
    assert admin.allows("d", "admin") and admin.allows("d", "read")
    assert mode_rank("read") < mode_rank("write") < mode_rank("admin")


def test_grant_covers_only_its_patterns() -> None:
    grant = Grant(("issue/*", "wiki/**"), "write")
    assert grant.allows("issue/1", "write")
    assert grant.allows("wiki/a/b", "read")
    assert not grant.allows("board/1", "read")
    assert not Grant((), "admin").allows("anything", "read")


def test_no_doc_needs_only_the_mode() -> None:
    grant = Grant(("issue/*",), "read")
    assert grant.allows(None, "read")
    assert not grant.allows(None, "admin")


def test_unknown_mode_and_string_docs_are_refused() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        Grant(("**",), "owner")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Grant("issue/*", "read")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Grant(("**",), "read").allows("d", "root")


def test_anonymous_is_default_org_with_every_right() -> None:
    anon = Principal.anonymous()
    assert (anon.org, anon.actor) == ("default", "anonymous")
    assert anon.is_anonymous and anon.expires_at is None
    assert anon.grant.allows("any/doc/at/all", "admin")
    assert anon.seconds_left(123.0) is None


def test_principal_is_frozen_and_reports_time_left() -> None:
    p = Principal("acme", "alice", Grant(("**",), "read"), expires_at=100.0)
    assert p.seconds_left(40.0) == 60.0
    with pytest.raises(AttributeError):
        p.org = "other"  # type: ignore[misc]
