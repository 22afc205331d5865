"""``crdt-sync get`` / ``put`` / ``tail`` as a user runs them (subprocesses) against a
real server: round trip, a put seen live and durable, frames tailed live, errors with
their exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import anyio
import httpx
import pytest
from pycrdt import Map, Text

from crdt_sync.client import connect
from crdt_sync.client.commands import (
    EXIT_FORBIDDEN,
    EXIT_NOT_FOUND,
    EXIT_UNAUTHORIZED,
    EXIT_UNREACHABLE,
)
from tests.cluster import free_port
from tests.integration.auth_support import SECRET, token

pytestmark = pytest.mark.anyio


async def cli(*args: str, stdin: bytes | None = None, env: dict | None = None) -> Any:
    """Run ``crdt-sync ARGS`` (bounded); the environment's URL/token variables removed."""
    environ = {k: v for k, v in os.environ.items() if k not in ("CRDT_SYNC_URL", "CRDT_SYNC_TOKEN")}
    with anyio.fail_after(60):
        return await anyio.run_process(
            [sys.executable, "-m", "crdt_sync", *args],
            input=stdin,
            check=False,
            env={**environ, **(env or {})},
        )


async def test_put_then_get_round_trips_and_is_seen_live(server, tmp_path) -> None:
    name = "note/cli"
    text = "# Title\n\nünïcode 😀 and\r\nCRLF, no final newline"
    source = tmp_path / "in.md"
    source.write_bytes(text.encode("utf-8"))
    async with connect(server.ws_url, name) as editor:
        with anyio.fail_after(20):
            await editor.synced()
        put = await cli("put", name, str(source), "--url", server.url)
        assert put.returncode == 0, put.stderr
        # put returns once the server has the change: the live editor gets it too.
        body = editor.doc.get("body", type=Text)
        with anyio.fail_after(20):
            while str(body) != text:
                await anyio.sleep(0.02)

        got = await cli("get", name, "--url", server.url)
        assert got.returncode == 0, got.stderr
        assert got.stdout == text.encode("utf-8")

        # A second put (stdin) replaces the text, it does not append; url from the env.
        edited = text.replace("😀", "🙂") + "\nmore"
        put = await cli("put", name, "-", stdin=edited.encode(), env={"CRDT_SYNC_URL": server.url})
        assert put.returncode == 0, put.stderr
        with anyio.fail_after(20):
            while str(body) != edited:
                await anyio.sleep(0.02)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        assert (await http.get("/docs/" + name)).json()["content"]["body"] == edited
    got = await cli("get", name, "--url", server.url + "/yjs")  # the /yjs base works too
    assert got.stdout == edited.encode("utf-8")


async def test_put_into_another_field(server, tmp_path) -> None:
    source = tmp_path / "title.txt"
    source.write_text("A title")
    put = await cli("put", "note/fields", str(source), "--field", "title", "--url", server.url)
    assert put.returncode == 0, put.stderr
    got = await cli("get", "note/fields", "--field", "title", "--url", server.url)
    assert got.stdout == b"A title"
    missing = await cli("get", "note/fields", "--url", server.url)
    assert missing.returncode == 1
    assert b"no field 'body'" in missing.stderr and b"title" in missing.stderr


async def test_unreachable_server_and_missing_doc(server, tmp_path) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    source = tmp_path / "x.txt"
    source.write_text("x")
    for args in (("get", "note/x"), ("put", "note/x", str(source))):
        result = await cli(*args, "--url", nobody)
        assert result.returncode == EXIT_UNREACHABLE, result
        assert b"cannot reach " + nobody.encode() in result.stderr

    missing = await cli("get", "note/never-written", "--url", server.url)
    assert missing.returncode == EXIT_NOT_FOUND
    assert b"404" in missing.stderr and b"note/never-written" in missing.stderr

    unreadable = await cli("put", "note/x", str(tmp_path / "absent.txt"), "--url", server.url)
    assert unreadable.returncode == 1 and b"cannot read" in unreadable.stderr

    bad_url = await cli("get", "note/x", "--url", "127.0.0.1:1234")
    assert bad_url.returncode == 2 and b"http" in bad_url.stderr


async def test_tokens_401_and_403(server_factory, tmp_path) -> None:
    server = server_factory("--auth-secret", SECRET)
    source = tmp_path / "x.txt"
    source.write_text("secret text")
    writer = token(docs=("note/**",), mode="write")
    put = await cli("put", "note/x", str(source), "--url", server.url, "--token", writer)
    assert put.returncode == 0, put.stderr
    got = await cli("get", "note/x", "--url", server.url, env={"CRDT_SYNC_TOKEN": writer})
    assert got.stdout == b"secret text"

    for args in (("get", "note/x"), ("put", "note/x", str(source))):
        anonymous = await cli(*args, "--url", server.url)
        assert anonymous.returncode == EXIT_UNAUTHORIZED, anonymous
        assert b"401" in anonymous.stderr
        bad = await cli(*args, "--url", server.url, "--token", "not-a-token")
        assert bad.returncode == EXIT_UNAUTHORIZED, bad
        foreign = await cli(*args, "--url", server.url, "--token", token(docs=("issue/**",)))
        assert foreign.returncode == EXIT_FORBIDDEN, foreign
        assert b"403" in foreign.stderr

    reader = token(docs=("note/**",), mode="read")
    refused = await cli("put", "note/x", str(source), "--url", server.url, "--token", reader)
    assert refused.returncode == EXIT_FORBIDDEN, refused
    got = await cli("get", "note/x", "--url", server.url, "--token", reader)
    assert got.stdout == b"secret text"  # unchanged


def test_tail_help_parses() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "crdt_sync", "tail", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for flag in ("--since", "--type", "--url", "--token"):
        assert flag in result.stdout


async def test_put_refuses_a_field_that_is_not_text(server, tmp_path) -> None:
    name = "note/typed"
    async with connect(server.ws_url, name) as editor:
        with anyio.fail_after(20):
            await editor.synced()
        editor.doc["meta"] = Map({"kind": "map"})
        await editor.flush()
        with anyio.fail_after(20):
            while "meta" not in (await docs_content(server, name)):
                await anyio.sleep(0.05)
    source = tmp_path / "x.txt"
    source.write_text("text")
    refused = await cli("put", name, str(source), "--field", "meta", "--url", server.url)
    assert refused.returncode == 1 and b"not text" in refused.stderr, refused
    got = await cli("get", name, "--field", "meta", "--url", server.url)
    assert got.returncode == 1 and b"not text" in got.stderr
    assert (await docs_content(server, name))["meta"] == {"kind": "map"}


async def docs_content(server: Any, name: str) -> dict:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        response = await http.get("/docs/" + name)
    return response.json()["content"] if response.status_code == 200 else {}


async def test_put_is_durable_when_it_returns(server_factory: Any, tmp_path) -> None:
    # kill -9 right after put returned: the text is there after the restart.
    server = server_factory()
    source = tmp_path / "in.txt"
    source.write_text("kept across kill -9")
    put = await cli("put", "note/durable", str(source), "--url", server.url)
    assert put.returncode == 0, put.stderr
    server.stop(signal.SIGKILL)
    again = server_factory(db=server.db)
    got = await cli("get", "note/durable", "--url", again.url)
    assert got.returncode == 0, got.stderr
    assert got.stdout == b"kept across kill -9"


async def test_tail_prints_frames_live(server) -> None:
    environ = {k: v for k, v in os.environ.items() if k not in ("CRDT_SYNC_URL", "CRDT_SYNC_TOKEN")}
    with anyio.fail_after(60):
        async with await anyio.open_process(
            [
                sys.executable,
                "-m",
                "crdt_sync",
                "tail",
                "--since",
                "0",
                "--type",
                "task",
                "--url",
                server.url,
            ],
            env=environ,
        ) as proc:
            try:
                async with httpx.AsyncClient(base_url=server.url) as http:
                    for record_id, t in (("n-1", "note"), ("t-1", "task")):
                        mutation = {"t": t, "id": record_id, "op": "i", "p": {"k": 1}}
                        response = await http.post(
                            "/sync/v1/mutations", json={"mutations": [mutation]}
                        )
                        assert response.status_code == 200, response.text
                assert proc.stdout is not None
                line = b""
                while not line.endswith(b"\n"):
                    line += await proc.stdout.receive(1)
                frame = json.loads(line)
                assert (frame["t"], frame["id"], frame["op"], frame["p"]) == (
                    "task",
                    "t-1",
                    "i",
                    {"k": 1},
                )
            finally:
                proc.terminate()
