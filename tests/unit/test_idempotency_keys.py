"""A ``client_tx_id`` names one mutation: reused on another record it is refused, never
answered with that record's result (which could be outside the caller's grant)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crdt_sync.mutations import Mutation, MutationError

from .live_node import ORG, Node, live_node

pytestmark = pytest.mark.anyio


async def mutate(node: Node, *mutations: Mutation, actor: str) -> list[Any]:
    return await node.feed.mutations.mutate_many(ORG, list(mutations), actor=actor, client_id=None)


async def test_a_key_reused_on_another_record_is_refused_not_replayed(tmp_path: Path) -> None:
    async with live_node(tmp_path) as node:
        (first,) = await mutate(
            node, Mutation("secret", "1", "i", {"pin": 1234}, client_tx_id="42"), actor="alice"
        )
        assert isinstance(first, dict) and first["status"] == 201
        (reused,) = await mutate(
            node, Mutation("public", "x", "i", {"a": 1}, client_tx_id="42"), actor="bob"
        )
        assert isinstance(reused, MutationError)
        assert (reused.status, reused.error) == (409, "tx_id_reused")
        assert "secret" not in reused.detail and "1234" not in reused.detail
        assert await node.store.get_record(ORG, "public", "x") is None
        # The same mutation again is still a replay.
        (again,) = await mutate(
            node, Mutation("secret", "1", "i", {"pin": 1234}, client_tx_id="42"), actor="alice"
        )
        assert isinstance(again, dict) and again["replayed"] is True
        assert again["sid"] == first["sid"]


async def test_a_key_reused_within_one_batch_on_another_record_is_refused(
    tmp_path: Path,
) -> None:
    async with live_node(tmp_path) as node:
        results = await mutate(
            node,
            Mutation("task", "a", "i", {"n": 1}, client_tx_id="k"),
            Mutation("task", "b", "i", {"n": 2}, client_tx_id="k"),
            Mutation("task", "a", "i", {"n": 1}, client_tx_id="k"),
            actor="bob",
        )
        assert isinstance(results[0], dict) and results[0]["status"] == 201
        assert isinstance(results[1], MutationError) and results[1].error == "tx_id_reused"
        assert isinstance(results[2], dict) and results[2]["replayed"] is True
        assert await node.store.get_record(ORG, "task", "b") is None
