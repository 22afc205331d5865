"""Awareness between npm y-websocket clients: presence appears, and disappears when a
client leaves, cleanly or by vanishing (SIGKILL, no goodbye from the client).

Scripts: ``awareness_peer.mjs`` (alice, who shows herself and then leaves or is
killed) and ``awareness_watch.mjs`` (bob, who watches her; carol, a newcomer).
"""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.interop

# y-protocols renews a local state every 15 s and drops a remote one after 30 s
# without renewal (awareness.outdatedTimeout). A removal seen well before that is
# the server's doing; the watcher also reports where the removal came from.
SERVER_REMOVAL_SECONDS = 10.0


def alice_and_bob(node, ws_url: str, room: str):
    """Start alice, then bob; return both once bob sees alice."""
    alice = node.start("awareness_peer.mjs", ws_url, room, {"name": "alice"})
    ready = alice.expect("ready")
    bob = node.start(
        "awareness_watch.mjs",
        ws_url,
        room,
        {"name": "bob", "watch": "alice", "removal_timeout_ms": 15000},
    )
    seen = bob.expect("seen")
    assert seen["clientID"] == ready["clientID"]
    # Bob joined after alice set her state: he must get it from the server on
    # connect, not from alice's renewal 15 s later.
    assert seen["ms_after_start"] < 5000, seen
    return alice, bob, ready["clientID"]


def assert_removed_by_server(removed: dict, alice_id: int) -> None:
    assert removed["clientID"] == alice_id
    assert removed["origin"] == "server", (
        f"alice's state was removed by {removed['origin']!r}, not by a message from the server"
    )
    assert removed["users"] == {}, removed
    # Bob's own connection stayed up (y-websocket also drops remote states when it
    # itself disconnects, which would fake a removal).
    assert removed["connected"] is True and removed["closes"] == 0, removed


def kill(alice) -> None:
    alice.kill()  # SIGKILL: no awareness removal, no close frame; the kernel closes the socket


def leave(alice) -> None:
    alice.send("leave")  # provider.destroy(): sends its null state, then closes
    alice.expect("left")
    alice.finish()


@pytest.mark.parametrize("depart", [kill, leave], ids=["killed", "leaves"])
def test_awareness_removed_when_client_departs(server, node, depart) -> None:
    room = f"notes/awareness-{depart.__name__}"
    alice, bob, alice_id = alice_and_bob(node, server.ws_url, room)

    departed_at = time.monotonic()
    depart(alice)
    removed = bob.expect("removed", timeout=20)
    elapsed = time.monotonic() - departed_at
    assert_removed_by_server(removed, alice_id)
    assert elapsed < SERVER_REMOVAL_SECONDS, f"removal took {elapsed:.1f} s ({depart.__name__})"

    # No ghost for newcomers either: carol gets bob (still connected) but not alice.
    carol = node.run(
        "awareness_watch.mjs",
        server.ws_url,
        room,
        {"name": "carol", "mode": "snapshot", "expect": "bob"},
    )
    assert list(carol["snapshot"]["users"].values()) == ["bob"], carol

    bob.send("leave")
    bob.finish()
