"""Where a token is read from: query, Authorization, or a WebSocket subprotocol."""

from __future__ import annotations

from typing import Any

import pytest

from crdt_sync.auth.extract import choose_subprotocol, token_from_scope
from crdt_sync.auth.tokens import TokenError

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln-_x"


def scope(
    kind: str = "websocket",
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    subprotocols: list[str] | None = None,
) -> dict[str, Any]:
    s: dict[str, Any] = {"type": kind, "query_string": query, "headers": headers or []}
    if subprotocols is not None:
        s["subprotocols"] = subprotocols
    return s


def test_no_token_anywhere() -> None:
    found = token_from_scope(scope("http"))
    assert (found.token, found.source, found.subprotocol) == (None, None, None)


def test_query_parameter() -> None:
    found = token_from_scope(scope(query=b"room=x&token=" + TOKEN.encode()))
    assert (found.token, found.source) == (TOKEN, "query")


def test_query_parameter_is_percent_decoded() -> None:
    found = token_from_scope(scope("http", query=b"token=a%2Eb%2Ec"))
    assert found.token == "a.b.c"


def test_authorization_bearer_any_case() -> None:
    for scheme in (b"Bearer", b"bearer", b"BEARER"):
        found = token_from_scope(
            scope("http", headers=[(b"authorization", scheme + b" " + TOKEN.encode())])
        )
        assert (found.token, found.source) == (TOKEN, "authorization")


def test_other_authorization_schemes_are_ignored() -> None:
    found = token_from_scope(scope("http", headers=[(b"authorization", b"Basic dXNlcjpwdw==")]))
    assert found.token is None


def test_subprotocol_token_and_which_protocol_to_echo() -> None:
    found = token_from_scope(scope(subprotocols=["crdt-sync", "bearer." + TOKEN]))
    assert (found.token, found.source, found.subprotocol) == (TOKEN, "subprotocol", "crdt-sync")


def test_subprotocols_from_the_raw_header_when_the_scope_has_no_list() -> None:
    header = (b"sec-websocket-protocol", b"bearer." + TOKEN.encode() + b", crdt-sync")
    found = token_from_scope(scope(headers=[header]))
    assert (found.token, found.subprotocol) == (TOKEN, "crdt-sync")


def test_echo_falls_back_to_another_protocol_then_to_the_token_entry() -> None:
    assert choose_subprotocol(["y-protocol", "bearer.x"]) == "y-protocol"
    assert choose_subprotocol(["bearer.x"]) == "bearer.x"
    assert choose_subprotocol([]) is None


def test_subprotocol_is_not_read_on_plain_http() -> None:
    header = (b"sec-websocket-protocol", b"bearer." + TOKEN.encode())
    assert token_from_scope(scope("http", headers=[header])).token is None


def test_the_same_token_in_two_places_is_fine() -> None:
    found = token_from_scope(
        scope(query=b"token=" + TOKEN.encode(), subprotocols=["crdt-sync", "bearer." + TOKEN])
    )
    assert found.token == TOKEN


@pytest.mark.parametrize(
    "bad",
    [
        scope(query=b"token=a&token=b"),
        scope(query=b"token=a", headers=[(b"authorization", b"Bearer b")]),
        scope(query=b"token=a", subprotocols=["bearer.b"]),
        scope(query=b"token="),
        scope(headers=[(b"authorization", b"Bearer ")]),
        scope(subprotocols=["bearer."]),
    ],
)
def test_conflicting_or_empty_tokens_are_malformed(bad: dict[str, Any]) -> None:
    with pytest.raises(TokenError) as caught:
        token_from_scope(bad)
    assert caught.value.reason == "malformed"
    assert "a" not in caught.value.detail.split() and "b" not in caught.value.detail.split()
