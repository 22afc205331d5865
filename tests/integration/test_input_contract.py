"""Issue 10, findings 11-13, against a live server: every refused input is a 4xx JSON
``{error, detail}`` or a documented close code, never a 500, a 1011 or a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from urllib.parse import quote

import anyio
import httpx
import pytest
import websockets

from rooms.codec import (
    AwarenessEntry,
    encode_awareness_update,
    encode_query_awareness,
)
from tests.integration.test_yjs_server import closed_with

pytestmark = pytest.mark.anyio

DEEP = "[" * 50_000 + "]" * 50_000


def frames_ws(server, query: str = "") -> str:
    return server.url.replace("http://", "ws://", 1) + "/sync/v1/ws" + query


def assert_error(response: httpx.Response, status: int, error: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error and body["detail"], body
    return body


def assert_clean_log(server) -> None:
    log = server.log()
    assert "Traceback" not in log, log[-4000:]
    assert "unhandled error" not in log and "internal error" not in log, log[-4000:]


async def test_superscript_digits_are_a_400_not_a_500(server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        arabic_one = "\u0661"
        for path in (
            "/sync/v1/delta?since=²",
            f"/sync/v1/delta?since={arabic_one}",
            "/sync/v1/events?since=²",
        ):
            body = assert_error(await http.get(path), 400, "invalid_parameter")
            assert "since" in body["detail"]
        events = await http.get("/sync/v1/events", headers={"Last-Event-ID": "²".encode("latin-1")})
        assert_error(events, 400, "invalid_parameter")
        for path in ("/docs?limit=²", "/sync/v1/records?limit=³", "/sync/v1/delta?limit=\u0663"):
            assert_error(await http.get(path), 400, "invalid_parameter")
    async with websockets.connect(frames_ws(server, "?since=²")) as ws:
        message = json.loads(await ws.recv())
        assert message["type"] == "error" and message["error"] == "invalid_parameter"
        assert (await closed_with(ws))[0] == 4400
    assert_clean_log(server)


async def test_deeply_nested_mutation_body_is_a_400(server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        deep_field = '{"mutations": [{"t": "a", "id": "1", "op": "i", "p": {"x": ' + DEEP + "}}]}"
        for body in (DEEP, deep_field):
            response = await http.post(
                "/sync/v1/mutations",
                content=body,
                headers={"content-type": "application/json"},
            )
            assert "deeper" in assert_error(response, 400, "invalid_json")["detail"]
        # Still serving writes.
        ok = await http.post(
            "/sync/v1/mutations",
            json={"mutations": [{"t": "a", "id": "1", "op": "i", "p": {"x": [[1]]}}]},
        )
        assert ok.json()["results"][0]["status"] == 201
    assert_clean_log(server)


async def test_lone_surrogates_in_mutations_are_refused(server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        for body in (
            '{"client_id": "\\ud800", "mutations": [{"t": "a", "id": "1", "op": "i", "p": {}}]}',
            '{"mutations": [{"t": "a", "id": "1", "op": "i", "p": {"x": "\\udfff"}}]}',
            '{"mutations": [{"t": "a", "id": "1", "op": "i", "p": {"\\ud800": 1}}]}',
            '{"mutations": [{"t": "a", "id": "1", "op": "i", "p": {"x": NaN}}]}',
        ):
            response = await http.post(
                "/sync/v1/mutations", content=body, headers={"content-type": "application/json"}
            )
            assert_error(response, 400, "invalid_json")
        # Nothing was stored: the feed reads back.
        delta = await http.get("/sync/v1/delta?since=0")
        assert delta.status_code == 200 and delta.json()["frames"] == []
    assert_clean_log(server)


async def test_mutation_fields_and_bytes_are_bounded_per_mutation(server_factory) -> None:
    server = server_factory("--max-mutation-fields", "3", "--max-mutation-bytes", "1024")
    ok = {"t": "a", "id": "1", "op": "i", "p": {"x": 1}}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        many = {"t": "a", "id": "2", "op": "i", "p": {f"f{i}": i for i in range(4)}}
        body = assert_error(
            await http.post("/sync/v1/mutations", json={"mutations": [ok, many]}),
            422,
            "too_many_fields",
        )
        assert body["index"] == 1 and body["field"] == "mutations[1].p"
        big = {"t": "a", "id": "3", "op": "i", "p": {"x": "y" * 2000}}
        body = assert_error(
            await http.post("/sync/v1/mutations", json={"mutations": [ok, ok, big]}),
            413,
            "mutation_too_large",
        )
        assert body["index"] == 2 and "--max-mutation-bytes" in body["detail"]
        # Refused whole: the first mutation was not applied either.
        assert (await http.get("/docs/a/1")).status_code == 404
        applied = await http.post("/sync/v1/mutations", json={"mutations": [ok]})
        assert applied.json()["results"][0]["status"] == 201


async def test_frame_socket_messages_are_parsed_within_bounds(server) -> None:
    for message in (DEEP[:60_000], '{"type": "view", "t": "a", "id": "\\ud800"}', "[NaN]"):
        async with websockets.connect(frames_ws(server)) as ws:
            await ws.send(message)
            code, reason = await closed_with(ws)
            assert code == 1007, (message[:40], code, reason)
    # A view with a deep state is refused at parse time too, and the feed goes on.
    async with websockets.connect(frames_ws(server)) as ws:
        state = "[" * 100 + "]" * 100
        await ws.send('{"type": "view", "t": "a", "id": "1", "state": {"x": ' + state + "}}")
        assert (await closed_with(ws))[0] == 1007
    async with websockets.connect(frames_ws(server)) as ws:
        await ws.send('{"type": "ping"}')
        with anyio.fail_after(10):
            assert json.loads(await ws.recv()) == {"type": "pong", "expires_in": None}
    assert_clean_log(server)


async def test_awareness_that_is_not_json_closes_1007_not_1011(server) -> None:
    states = [
        "[" * 5000 + "]" * 5000,  # RecursionError in json.loads: was 1011
        '{"user": {"name": "\\ud800"}}',  # lone surrogate: was accepted and relayed
        '{"x": NaN}',
        "{",
    ]
    for state in states:
        async with websockets.connect(server.ws_url + "/aw/1") as ws:
            await ws.recv()
            await ws.send(encode_awareness_update([AwarenessEntry(7, 1, state)]))
            await ws.send(encode_query_awareness())
            code, _ = await closed_with(ws)
            assert code == 1007, (state[:30], code)
    assert_clean_log(server)


@pytest.mark.parametrize(
    "name",
    ["invoice\u202egpj.exe", "task/1\u200b", "a\u2066b\u2069", "\ufeffdoc", "red\x1b[31m"],
    ids=["rlo", "zwsp", "isolate", "bom", "ansi"],
)
async def test_doc_names_with_bidi_or_zero_width_characters_are_refused(server, name) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        encoded = quote(name, safe="/")
        assert_error(await http.get(f"/docs/{encoded}"), 400, "invalid_doc_name")
        assert_error(
            await http.post(f"/docs/{encoded}/update", content=b"\x00\x00"), 400, "invalid_doc_name"
        )
        mutation = {"t": "task", "id": name.replace("/", "_"), "op": "i", "p": {}}
        assert_error(
            await http.post("/sync/v1/mutations", json={"mutations": [mutation]}),
            400,
            "invalid_mutation",
        )
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(server.ws_url + "/" + quote(name, safe="/")):
            pass
    assert info.value.response.status_code == 400
    assert json.loads(info.value.response.body)["error"] == "invalid_doc_name"


@pytest.mark.parametrize("asgi_server", ["uvicorn", "hypercorn"])
async def test_refused_handshakes_log_no_error(server_factory, asgi_server) -> None:
    server = server_factory("--server", asgi_server)
    for path in ("/", "/a%01b", "/x\u202e"):
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(server.ws_url + quote(path, safe="/%")):
                pass
        assert info.value.response.status_code == 400
    # The server is fine and says so once per refusal, as a warning.
    async with websockets.connect(server.ws_url + "/fine") as ws:
        await ws.recv()
    log = server.log()
    assert log.count("refused ws for doc") == 3, log[-3000:]
    assert "without completing handshake" not in log, log[-3000:]
    assert " ERROR " not in log, log[-3000:]


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--db", "/nonexistent-dir-crdt-sync/x.db"], "--db"),
        (["--room-idle-seconds", "nan"], "--room-idle-seconds"),
        (["--ping-timeout", "inf"], "--ping-timeout"),
        (["--frame-coalesce-ms", "-inf"], "--frame-coalesce-ms"),
    ],
)
def test_bad_startup_settings_are_one_line_and_exit_2(tmp_path, args, flag) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "crdt_sync", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert flag in last and "error" in last, result.stderr


@pytest.mark.parametrize(
    "env", [{"CRDT_SYNC_ROOM_IDLE_SECONDS": "NaN"}, {"CRDT_SYNC_DB": "/no/such/dir/x.db"}]
)
def test_bad_startup_env_is_one_line_and_exit_2(tmp_path, env) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "crdt_sync", "serve", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={**__import__("os").environ, **env},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
