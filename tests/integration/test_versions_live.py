"""Document versions against a real ``crdt-sync serve`` (issue 15, item 4).

Three Yjs clients edit a record doc, a version is taken, they edit on, the version is
restored while all three stay connected and keep editing: everyone converges on the
version's content plus the edits made after the restore, nothing duplicated, nobody
reconnected. Versions survive a restart; automatic versions credit their authors;
every error is a JSON ``{error, detail}``.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
from pycrdt import Array, Doc, Map, Text

from crdt_sync.client import connect
from crdt_sync.records.projection import doc_to_json
from tests.integration.test_docs_api import assert_error
from tests.server_process import ServerProcess

pytestmark = pytest.mark.anyio

TIMEOUT = 20


@pytest.fixture(scope="module")
def versions_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir: Path = tmp_path_factory.mktemp("versions")
    with ServerProcess(workdir, "--no-auto-versions", "--frame-coalesce-ms", "20") as proc:
        yield proc


@pytest.fixture
async def http(versions_server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=versions_server.url, timeout=20) as client:
        yield client


def vpath(name: str, suffix: str = "") -> str:
    return "/docs/" + quote(name, safe="/") + "/versions" + suffix


async def until(predicate: Any, what: str) -> None:
    """Wait (bounded) until ``predicate()`` (sync or async) is true."""
    with anyio.fail_after(TIMEOUT):
        while True:
            result = predicate()
            if hasattr(result, "__await__"):
                result = await result
            if result:
                return
            await anyio.sleep(0.02)


async def server_content(http: httpx.AsyncClient, name: str) -> dict[str, Any]:
    response = await http.get("/docs/" + quote(name, safe="/"))
    assert response.status_code == 200, response.text
    return response.json()["content"]


async def take(http: httpx.AsyncClient, name: str, label: str | None = None) -> dict[str, Any]:
    body = {"label": label} if label is not None else None
    response = await http.post(vpath(name), json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def test_restore_while_three_clients_stay_connected_and_keep_editing(
    versions_server: ServerProcess, http: httpx.AsyncClient
) -> None:
    name = "notes/restore-live"
    url = versions_server.ws_url
    async with connect(url, name) as a, connect(url, name) as b, connect(url, name) as c:
        clients = (a, b, c)
        with anyio.fail_after(TIMEOUT):
            for client in clients:
                await client.synced()
        body = a.doc.get("body", type=Text)
        body += "hello"
        b.doc.get("fields", type=Map)["title"] = "T1"
        c.doc.get("items", type=Array).extend([1, 2])

        async def converged(expect: dict[str, Any] | None = None) -> bool:
            server = await server_content(http, name)
            views = [doc_to_json(client.doc) for client in clients]
            same = all(view == server for view in views)
            return same and (expect is None or server == expect)

        await until(lambda: converged(), "the first edits converge")
        version = await take(http, name, label="v1")
        assert version["label"] == "v1" and version["doc"] == name
        assert version["authors"] == ["anonymous"]  # who edited since (auth is off)
        got = await http.get(vpath(name, f"/{version['version']}"))
        assert got.status_code == 200, got.text
        at_version = got.json()["content"]
        assert at_version == {"body": "hello", "fields": {"title": "T1"}, "items": [1, 2]}
        assert got.json()["record"] == {"body": "hello", "title": "T1", "items": [1, 2]}

        # more edits after the version, from every client
        body.insert(5, " world")
        b.doc.get("fields", type=Map)["title"] = "T2"
        b.doc.get("fields", type=Map)["extra"] = True
        c.doc.get("items", type=Array).append(3)
        del c.doc.get("items", type=Array)[0]
        await until(lambda: converged(), "the later edits converge")
        assert (await server_content(http, name))["body"] == "hello world"

        restored = await http.post(vpath(name, f"/{version['version']}/restore"))
        assert restored.status_code == 200, restored.text
        result = restored.json()
        assert result["restored_from"] == version["version"] and result["changed"] is True
        assert result["before"] is not None  # the state before the restore was versioned
        assert result["version"]["label"] == f"restore of version {version['version']}"
        assert base64.b64decode(result["state_vector"])
        await until(lambda: converged(at_version), "every client sees the restored content")

        # they keep editing: their later edits work, on top of the restored content
        body.insert(len(str(body)), "!")
        b.doc.get("fields", type=Map)["after"] = 1
        c.doc.get("items", type=Array).append(9)
        expected = {"body": "hello!", "fields": {"title": "T1", "after": 1}, "items": [1, 2, 9]}
        await until(lambda: converged(expected), "the edits after the restore converge")
        assert not any(client.closed.is_set() for client in clients)  # nobody reconnected

    # the record's projection (its frames) followed the restore
    async def record_fields() -> dict[str, Any] | None:
        response = await http.get("/sync/v1/records", params={"t": "notes"})
        if response.status_code == 429:  # asked again sooner than --delta-min-interval-ms
            await anyio.sleep(0.1)
            return None
        assert response.status_code == 200, response.text
        for record in response.json()["records"]:
            if record["id"] == "restore-live":
                return record["fields"]
        return None

    want = {"body": "hello!", "title": "T1", "after": 1, "items": [1, 2, 9]}
    await until(lambda: _equal(record_fields(), want), "the record is framed")
    listed = (await http.get(vpath(name))).json()["versions"]
    labels = [v["label"] for v in listed]
    assert labels[0] == f"restore of version {version['version']}"
    assert labels[-1] == "v1" and len(listed) == 3


async def _equal(value: Any, want: Any) -> bool:
    return (await value) == want


async def test_binary_format_is_the_yjs_update_of_the_version(http: httpx.AsyncClient) -> None:
    name = "plain-binary"
    doc = Doc()
    doc["body"] = Text("binary")
    assert (await http.post("/docs/plain-binary/update", content=doc.get_update())).status_code
    version = await take(http, name)
    for kwargs in (
        {"params": {"format": "binary"}},
        {"headers": {"Accept": "application/octet-stream"}},
    ):
        response = await http.get(vpath(name, f"/{version['version']}"), **kwargs)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/octet-stream"
        copy = Doc()
        copy.apply_update(response.content)
        assert str(copy.get("body", type=Text)) == "binary"
        assert len(response.content) == version["size"]
    as_json = await http.get(vpath(name, f"/{version['version']}"))
    assert as_json.json()["content"] == {"body": "binary"} and "record" not in as_json.json()


async def test_listing_pages_newest_first_with_a_cursor(http: httpx.AsyncClient) -> None:
    name = "paged/doc"
    doc = Doc()
    doc["body"] = text = Text()
    made = []
    for i in range(5):
        before = doc.get_state()
        text += str(i)
        await http.post("/docs/paged/doc/update", content=doc.get_update(before))
        made.append((await take(http, name, label=f"n{i}"))["version"])
    seen: list[int] = []
    cursor = None
    with anyio.fail_after(TIMEOUT):
        while True:
            params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
            page = (await http.get(vpath(name), params=params)).json()
            seen += [v["version"] for v in page["versions"]]
            assert set(page["versions"][0]) == {
                "version",
                "doc",
                "created_at",
                "authors",
                "label",
                "size",
                "state_vector",
            }
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert seen == made[::-1]


async def test_errors(http: httpx.AsyncClient) -> None:
    doc = Doc()
    doc["body"] = Text("x")
    await http.post("/docs/err/doc/update", content=doc.get_update())
    assert_error(await http.get(vpath("err/none")), 404, "not_found")
    assert_error(await http.post(vpath("err/none")), 404, "not_found")
    assert_error(await http.get(vpath("err/doc", "/999999")), 404, "not_found")
    assert_error(await http.post(vpath("err/doc", "/999999/restore")), 404, "not_found")
    assert_error(await http.get(vpath("err/doc", "/abc")), 400, "invalid_version")
    assert_error(await http.get(vpath("err/doc", "/0")), 400, "invalid_version")
    assert_error(await http.get(vpath("err/doc", "/1x")), 400, "invalid_version")
    assert_error(await http.post(vpath("err/doc", "/-1/restore")), 400, "invalid_version")
    assert_error(
        await http.get(vpath("err/doc"), params={"cursor": "zz"}), 400, "invalid_parameter"
    )
    assert_error(await http.get(vpath("err/doc"), params={"limit": "0"}), 400, "invalid_parameter")
    fmt = await http.get(vpath("err/doc", "/1"), params={"format": "xml"})
    assert_error(fmt, 400, "invalid_parameter")
    long = {"label": "x" * 201}
    assert_error(await http.post(vpath("err/doc"), json=long), 400, "invalid_label")
    assert_error(await http.post(vpath("err/doc"), json={"label": 5}), 400, "invalid_label")
    assert_error(await http.post(vpath("err/doc"), json={"label": "a\nb"}), 400, "invalid_label")
    assert_error(await http.post(vpath("err/doc"), json=[1]), 400, "invalid_json")
    assert_error(await http.post(vpath("err/doc"), json={"lbl": "x"}), 400, "invalid_json")
    bad = await http.post(
        vpath("err/doc"), content=b"{", headers={"content-type": "application/json"}
    )
    assert_error(bad, 400, "invalid_json")
    text_body = await http.post(
        vpath("err/doc"), content=b"label", headers={"content-type": "text/plain"}
    )
    assert_error(text_body, 415, "unsupported_media_type")
    assert_error(await http.get("/docs/bad%00name/versions"), 400, "invalid_doc_name")
    ok = await http.post(vpath("err/doc"), json={"label": "é" * 200})
    assert ok.status_code == 201 and ok.json()["label"] == "é" * 200
    # a version of another doc is not this doc's
    other = await http.get(vpath("err/other", f"/{ok.json()['version']}"))
    assert_error(other, 404, "not_found")


def test_versions_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "restart.db"

    async def first() -> dict[str, Any]:
        with ServerProcess(tmp_path, db=db) as proc:
            async with httpx.AsyncClient(base_url=proc.url, timeout=20) as http:
                doc = Doc()
                doc["body"] = Text("kept")
                await http.post("/docs/keep/me/update", content=doc.get_update())
                return await take(http, "keep/me", label="before restart")

    async def second(version: dict[str, Any]) -> None:
        with ServerProcess(tmp_path, db=db) as proc:
            async with httpx.AsyncClient(base_url=proc.url, timeout=20) as http:
                listed = (await http.get(vpath("keep/me"))).json()["versions"]
                assert listed[0] == version
                got = await http.get(vpath("keep/me", f"/{version['version']}"))
                assert got.json()["content"] == {"body": "kept"}

    version = anyio.run(first)
    anyio.run(second, version)


async def test_automatic_versions_credit_this_nodes_authors(tmp_path: Path) -> None:
    args = ("--version-every-updates", "3", "--version-idle-seconds", "0")
    with ServerProcess(tmp_path, *args) as proc:
        async with httpx.AsyncClient(base_url=proc.url, timeout=20) as http:
            async with connect(proc.ws_url, "auto/doc") as client:
                with anyio.fail_after(TIMEOUT):
                    await client.synced()
                text = client.doc.get("body", type=Text)
                for ch in "abc":
                    text += ch
                    await client.flush()

                async def versions() -> list[dict[str, Any]]:
                    response = await http.get(vpath("auto/doc"))
                    return response.json()["versions"] if response.status_code == 200 else []

                async def one() -> bool:
                    return len(await versions()) >= 1

                await until(one, "an automatic version after three updates")
                first = (await versions())[-1]
                assert first["authors"] == ["anonymous"] and first["label"] is None
                got = await http.get(vpath("auto/doc", f"/{first['version']}"))
                assert got.json()["content"] == {"body": "abc"}
                metrics = (await http.get("/metrics")).text
                assert 'crdt_sync_versions_total{kind="auto"} 1.0' in metrics


async def test_grants_and_tenants(tmp_path: Path) -> None:
    """Reads need read, taking and restoring need write, of the doc itself; another
    org's versions of the same doc name are not there."""
    from tests.integration.auth_support import SECRET, bearer, token

    with ServerProcess(tmp_path, "--auth-secret", SECRET, "--no-auto-versions") as proc:
        writer = bearer(token("ann", "orga", ("notes/**",), "write"))
        reader = bearer(token("rob", "orga", ("notes/**",), "read"))
        stranger = bearer(token("sam", "orga", ("other/**",), "write"))
        tenant = bearer(token("tia", "orgb", ("**",), "write"))
        async with httpx.AsyncClient(base_url=proc.url, timeout=20) as http:
            doc = Doc()
            doc["body"] = Text("secret")
            stored = await http.post(
                "/docs/notes/a/update", content=doc.get_update(), headers=writer
            )
            assert stored.status_code == 200, stored.text
            made = await http.post(vpath("notes/a"), json={"label": "w"}, headers=writer)
            assert made.status_code == 201, made.text
            v = made.json()["version"]
            assert made.json()["authors"] == ["ann"]
            assert (await http.get(vpath("notes/a"), headers=reader)).status_code == 200
            assert (await http.get(vpath("notes/a", f"/{v}"), headers=reader)).status_code == 200
            assert_error(await http.post(vpath("notes/a"), headers=reader), 403, "forbidden")
            restore = vpath("notes/a", f"/{v}/restore")
            assert_error(await http.post(restore, headers=reader), 403, "forbidden")
            assert_error(await http.get(vpath("notes/a"), headers=stranger), 403, "forbidden")
            denied = await http.get(vpath("notes/a", f"/{v}"), headers=stranger)
            assert_error(denied, 403, "forbidden")
            assert_error(await http.get(vpath("notes/a")), 401, "unauthorized")
            # org b has no doc notes/a, and no version v of it
            assert_error(await http.get(vpath("notes/a"), headers=tenant), 404, "not_found")
            got = await http.get(vpath("notes/a", f"/{v}"), headers=tenant)
            assert_error(got, 404, "not_found")
            assert_error(await http.post(restore, headers=tenant), 404, "not_found")
            ok = await http.post(restore, headers=writer)
            assert ok.status_code == 200 and ok.json()["changed"] is False
