"""The document HTTP API (``/docs``) of a real ``crdt-sync serve``, driven with httpx.

One server for the module (started once: every test uses doc names of its own). Every
error must be JSON with exactly ``error`` and ``detail``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
import websockets
from pycrdt import Array, Doc, Map, Text

from crdt_sync.client import connect
from tests.integration.test_yjs_server import closed_with, wait_for
from tests.server_process import ServerProcess

pytestmark = pytest.mark.anyio

MAX_BYTES = 64 * 1024
#: A Yjs update with no structs and an empty delete set.
EMPTY_UPDATE = b"\x00\x00"


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir: Path = tmp_path_factory.mktemp("docs-api")
    with ServerProcess(workdir, "--max-message-bytes", str(MAX_BYTES)) as proc:
        yield proc


@pytest.fixture
async def http(api_server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_server.url, timeout=20) as client:
        yield client


def path(name: str, suffix: str = "") -> str:
    return "/docs/" + quote(name, safe="/") + suffix


def text_update(text: str, key: str = "body") -> bytes:
    doc = Doc()
    doc[key] = body = Text()
    body += text
    return doc.get_update()


def assert_error(response: httpx.Response, status: int, error: str, mentions: str = "") -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == error, body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert mentions in body["detail"], body


async def post(http: httpx.AsyncClient, name: str, update: bytes) -> dict[str, Any]:
    response = await http.post(path(name, "/update"), content=update)
    assert response.status_code == 200, response.text
    return response.json()


# -- list --------------------------------------------------------------------------------


async def test_list_filters_by_literal_prefix_and_pages_with_a_cursor(http) -> None:
    names = [
        "lst/a/1",
        "lst/a/10",
        "lst/a/2",
        "lst/a/b/c",
        "lst/a_x",  # '_' and '%' are not wildcards
        "lst/a%y",
        "lst/ab",
        "lst/héllo wörld",
        "lst/日本/文書",
        "lst/q?x=1#frag",
    ]
    for name in names:
        result = await post(http, name, text_update(name))
        assert result["name"] == name and result["applied"] is True

    def listed(response: httpx.Response) -> list[str]:
        assert response.status_code == 200, response.text
        return [d["name"] for d in response.json()["docs"]]

    everything = listed(await http.get("/docs", params={"prefix": "lst/", "limit": 1000}))
    # Ordered by name as UTF-8 bytes (= code points).
    assert everything == sorted(names, key=lambda n: n.encode())
    assert listed(await http.get("/docs", params={"prefix": "lst/a/"})) == [
        "lst/a/1",
        "lst/a/10",
        "lst/a/2",
        "lst/a/b/c",
    ]
    assert listed(await http.get("/docs", params={"prefix": "lst/a_"})) == ["lst/a_x"]
    assert listed(await http.get("/docs", params={"prefix": "lst/a%"})) == ["lst/a%y"]
    assert listed(await http.get("/docs", params={"prefix": "lst/日本/"})) == ["lst/日本/文書"]
    assert listed(await http.get("/docs", params={"prefix": "lst/nothing"})) == []

    entry = (await http.get("/docs", params={"prefix": "lst/ab"})).json()["docs"][0]
    assert set(entry) == {"name", "size", "updated_at", "update_count"}
    assert entry["size"] > 0 and entry["update_count"] >= 1 and entry["updated_at"] > 1.6e12

    # Paging: limit 3, follow next_cursor to the end; nothing lost or repeated.
    pages: list[list[str]] = []
    cursor = None
    with anyio.fail_after(10):
        while True:
            params = {"prefix": "lst/", "limit": "3"} | ({"cursor": cursor} if cursor else {})
            response = await http.get("/docs", params=params)
            pages.append(listed(response))
            cursor = response.json()["next_cursor"]
            if cursor is None:
                break
            assert isinstance(cursor, str) and cursor
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert [n for page in pages for n in page] == everything


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        pytest.param({"limit": "0"}, "limit", id="limit=0"),
        pytest.param({"limit": "1001"}, "limit", id="limit=1001"),
        pytest.param({"limit": "-1"}, "limit", id="limit=-1"),
        pytest.param({"limit": "ten"}, "limit", id="limit=ten"),
        pytest.param({"limit": "1.5"}, "limit", id="limit=1.5"),
        pytest.param({"cursor": "_w"}, "cursor", id="cursor-not-utf8"),  # base64 of 0xff
        pytest.param({"cursor": "a"}, "cursor", id="cursor-truncated"),
        pytest.param({"cursor": "!!!"}, "cursor", id="cursor-not-base64url-1"),
        pytest.param({"cursor": "@@@@"}, "cursor", id="cursor-not-base64url-2"),
    ],
)
async def test_list_rejects_bad_parameters_naming_them(http, params, parameter) -> None:
    response = await http.get("/docs", params=params)
    assert_error(response, 400, "invalid_parameter", mentions=parameter)


# -- read --------------------------------------------------------------------------------


async def test_get_doc_projects_root_types_to_json(http) -> None:
    doc = Doc()
    doc["body"] = body = Text()
    body += "héllo ✓"
    doc["fields"] = fields = Map()
    fields["count"] = 3
    fields["ratio"] = 2.5
    fields["done"] = True
    fields["title"] = "T"
    fields["nothing"] = None
    fields["tags"] = ["a", 1]
    fields["nested"] = Map({"depth": 2, "inner": Map({"x": 1})})
    doc["items"] = items = Array()
    items.extend([1, "two", 3.5, False])
    items.append(Map({"k": 7}))
    await post(http, "json/types", doc.get_update())

    response = await http.get(path("json/types"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    got = response.json()
    assert got == {
        "name": "json/types",
        "content": {
            "body": "héllo ✓",
            "fields": {
                "count": 3,
                "ratio": 2.5,
                "done": True,
                "title": "T",
                "nothing": None,
                "tags": ["a", 1],
                "nested": {"depth": 2, "inner": {"x": 1}},
            },
            "items": [1, "two", 3.5, False, {"k": 7}],
        },
    }
    # Yjs numbers are doubles; integral ones come back as JSON integers, not 3.0.
    fields_json = got["content"]["fields"]
    assert type(fields_json["count"]) is int and type(fields_json["nested"]["depth"]) is int
    assert type(got["content"]["items"][0]) is int and type(fields_json["done"]) is bool
    assert re.search(r'"count":\s*3\s*[,}]', response.text), response.text


async def test_get_update_returns_the_state_and_a_diff_for_a_state_vector(http) -> None:
    name = "update/diff"
    writer = Doc()
    writer["body"] = body = Text()
    body += "first"
    await post(http, name, writer.get_update())

    full = await http.get(path(name, "/update"))
    assert full.status_code == 200
    assert full.headers["content-type"] == "application/octet-stream"
    reader = Doc()
    reader.apply_update(full.content)
    assert str(reader.get("body", type=Text)) == "first"
    old_state = reader.get_state()

    body += " second"
    writer["fields"] = fields = Map()
    fields["k"] = 1
    await post(http, name, writer.get_update(old_state))

    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        sv = encode(old_state).decode().rstrip("=")
        diff = await http.get(path(name, "/update"), params={"sv": sv})
        assert diff.status_code == 200, diff.text
        latest = await http.get(path(name, "/update"))
        assert len(diff.content) < len(latest.content)
        copy = Doc()
        copy.apply_update(full.content)
        copy.apply_update(diff.content)
        assert str(copy.get("body", type=Text)) == "first second"
        assert copy.get("fields", type=Map).to_py() == {"k": 1}
        # Nothing missing either way: the copy now holds exactly what the writer holds.
        assert writer.get_update(copy.get_state()) == EMPTY_UPDATE
        assert copy.get_update(writer.get_state()) == EMPTY_UPDATE
    # A state vector that already has everything: the diff changes nothing.
    current = base64.b64encode(writer.get_state()).decode()
    nothing = await http.get(path(name, "/update"), params={"sv": current})
    assert nothing.status_code == 200
    assert nothing.content == EMPTY_UPDATE


@pytest.mark.parametrize(
    "sv",
    [
        pytest.param("%%%", id="not-base64"),
        pytest.param("////", id="not-a-state-vector"),
        pytest.param("AQ", id="truncated"),  # one entry announced, none there
        pytest.param("BQE", id="count-too-large"),
    ],
)
async def test_get_update_rejects_a_bad_state_vector(http, sv) -> None:
    await post(http, "update/badsv", text_update("x"))
    response = await http.get(path("update/badsv", "/update"), params={"sv": sv})
    assert_error(response, 400, "invalid_parameter", mentions="sv")


async def test_unknown_docs_are_404(http) -> None:
    for response in (
        await http.get(path("missing/doc")),
        await http.get(path("missing/doc", "/update")),
        await http.delete(path("missing/doc")),
    ):
        assert_error(response, 404, "not_found", mentions="missing/doc")
    # Looking did not create it.
    assert (await http.get("/docs", params={"prefix": "missing/"})).json()["docs"] == []


async def test_invalid_doc_name_is_400(http) -> None:
    response = await http.get("/docs/bad%00name")
    assert_error(response, 400, "invalid_doc_name")


# -- write -------------------------------------------------------------------------------


async def test_post_then_get_round_trip_and_idempotent_replay(http) -> None:
    name = "write/round-trip"
    update = text_update("posted ✓")
    first = await post(http, name, update)
    assert first["name"] == name and first["applied"] is True
    assert isinstance(first["update_id"], int)
    assert (await http.get(path(name))).json() == {
        "name": name,
        "content": {"body": "posted ✓"},
    }
    # The same update again changes nothing: applied false, nothing logged.
    again = await post(http, name, update)
    assert again == {"name": name, "update_id": None, "applied": False}
    listed = (await http.get("/docs", params={"prefix": name})).json()["docs"]
    assert [d["update_count"] for d in listed] == [1]
    served = Doc()
    served.apply_update((await http.get(path(name, "/update"))).content)
    assert str(served.get("body", type=Text)) == "posted ✓"


async def test_post_rejects_garbage_empty_and_oversize_bodies(http) -> None:
    name = "write/rejected"
    assert_error(
        await http.post(path(name, "/update"), content=b"\x01\x02\x03garbage"),
        400,
        "invalid_update",
    )
    assert_error(await http.post(path(name, "/update"), content=b""), 400, "invalid_update")
    too_big = b"\x00" * (MAX_BYTES + 1)
    assert_error(await http.post(path(name, "/update"), content=too_big), 413, "too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        for _ in range(5):
            yield b"\x00" * (MAX_BYTES // 4)

    assert_error(await http.post(path(name, "/update"), content=chunks()), 413, "too_large")
    # None of that created the doc.
    assert_error(await http.get(path(name)), 404, "not_found")
    # An update just under the limit is fine.
    fits = text_update("y" * (MAX_BYTES - 200))
    assert len(fits) <= MAX_BYTES
    assert (await post(http, name, fits))["applied"] is True


async def test_post_is_seen_live_by_connected_yjs_clients(api_server, http) -> None:
    name = "write/live"
    async with connect(api_server.ws_url, name) as client:
        with anyio.fail_after(10):
            await client.synced()
        await post(http, name, text_update("from http"))
        body = client.doc.get("body", type=Text)
        await wait_for(lambda: str(body) == "from http", timeout=10)


# -- delete ------------------------------------------------------------------------------


async def test_delete_closes_clients_with_4404_and_removes_the_doc(api_server, http) -> None:
    name = "del/doc"
    await post(http, name, text_update("doomed"))
    await post(http, "del/neighbour", text_update("stays"))
    async with (
        websockets.connect(api_server.ws_url + "/" + name) as a,
        websockets.connect(api_server.ws_url + "/" + name) as b,
        websockets.connect(api_server.ws_url + "/del/neighbour") as neighbour,
    ):
        for ws in (a, b, neighbour):
            await ws.recv()  # sync step 1: joined
        deleted = await http.delete(path(name))
        assert deleted.status_code == 200, deleted.text
        assert deleted.json() == {"name": name, "deleted": True}
        assert (await closed_with(a))[0] == 4404
        assert (await closed_with(b))[0] == 4404
        await neighbour.ping()  # still open
    listed = (await http.get("/docs", params={"prefix": "del/"})).json()["docs"]
    assert [d["name"] for d in listed] == ["del/neighbour"]
    assert_error(await http.get(path(name)), 404, "not_found")
    assert_error(await http.get(path(name, "/update")), 404, "not_found")
    assert_error(await http.delete(path(name)), 404, "not_found")
    assert (await http.get(path("del/neighbour"))).json()["content"] == {"body": "stays"}
    # The name can be used again, from scratch.
    await post(http, name, text_update("reborn"))
    assert (await http.get(path(name))).json()["content"] == {"body": "reborn"}


async def test_wrong_method_is_405_json(http) -> None:
    assert_error(await http.put(path("any/doc")), 405, "method_not_allowed")
