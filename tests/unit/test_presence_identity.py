"""A frame-feed viewer's awareness state cannot override what the server sets."""

from __future__ import annotations

from crdt_sync.presence import viewer_identity


def test_an_authenticated_actor_is_the_viewers_user_name() -> None:
    state = {"user": {"name": "admin", "color": "red"}, "actor": "admin", "viewer": False}
    assert {**state, **viewer_identity(state, "alice", authenticated=True)} == {
        "user": {"name": "alice", "color": "red"},
        "actor": "alice",
        "viewer": True,
    }


def test_with_auth_off_a_viewer_names_itself_but_not_its_actor() -> None:
    state = {"user": {"name": "carol"}, "actor": "admin"}
    assert {**state, **viewer_identity(state, "anonymous", authenticated=False)} == {
        "user": {"name": "carol"},
        "actor": "anonymous",
        "viewer": True,
    }
    for user in (None, "carol", {"name": 3}, {"color": "red"}):
        assert (
            viewer_identity({"user": user}, "anonymous", authenticated=False)["user"]["name"]
            == "anonymous"
        )
