"""GET /openapi.json describes every HTTP route, and a live server keeps to it: schemathesis
generates valid and invalid requests for each operation and finds no 5xx and no response
that the document does not describe (status, content type, body schema)."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from crdt_sync.app import create_app
from crdt_sync.openapi import document
from crdt_sync.settings import Settings
from crdt_sync.web_pages import PAGES

pytestmark = pytest.mark.slow

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
#: Examples per operation and generation mode; the whole run stays well under a minute.
EXAMPLES = 25
#: SSE never ends: its refusals are checked in test_sync_feed, not by a generated call.
STREAMING = {"/sync/v1/events"}


def _openapi_path(starlette_path: str) -> str:
    return starlette_path.replace("{doc:name}", "{doc}").replace("{id:name}", "{id}")


def _refused_by_http_parser(response) -> bool:
    """Whether uvicorn's HTTP parser refused the request before the app saw it.

    Negative generation can produce requests that are not valid HTTP/1.1 (seen: a
    malformed ``Content-Length``); uvicorn answers those itself with a plain-text 400,
    which no route of ours produces and the document rightly does not describe.
    """
    content_type = " ".join(response.headers.get("content-type", []))  # a list per header
    return (
        response.status_code == 400
        and content_type.startswith("text/plain")
        and response.content.strip() == b"Invalid HTTP request received."
    )


def test_the_document_names_every_http_route(tmp_path) -> None:
    app = create_app(Settings(db=str(tmp_path / "x.db"))).app
    routed = {
        _openapi_path(route.path)
        for route in app.routes
        if isinstance(route, Route) and route.path not in PAGES  # redirects to /web/
    }
    routed.discard("/readyz")  # added by a parallel change; described already
    described = set(document()["paths"])
    assert routed <= described, routed - described
    doc = document()
    assert doc["openapi"].startswith("3.1")
    for path, item in doc["paths"].items():
        if path in ("/healthz", "/readyz"):  # their 503 is a health report, not an error
            continue
        for method, operation in item.items():
            if method == "parameters":
                continue
            for status, response in operation["responses"].items():
                if int(status) >= 400 and "content" in response:
                    schema = response["content"]["application/json"]["schema"]
                    ref = schema["$ref"].rsplit("/", 1)[-1]
                    required = doc["components"]["schemas"][ref]["required"]
                    assert {"error", "detail"} <= set(required), (path, method, status)


def test_live_server_keeps_to_its_openapi_document(server_factory) -> None:
    server = server_factory("--delta-min-interval-ms", "0", "--room-idle-seconds", "1")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        served = http.get("/openapi.json")
        assert served.status_code == 200 and served.json() == document()
        # Something to read: a record, a plain doc, frames.
        http.post(
            "/sync/v1/mutations",
            json={"mutations": [{"t": "task", "id": "1", "op": "i", "p": {"title": "a"}}]},
        ).raise_for_status()
        has_readyz = http.get("/readyz").status_code != 404
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    schema = schema.exclude(path=sorted(STREAMING))
    if not has_readyz:
        schema = schema.exclude(path="/readyz")
    failures: list[str] = []
    calls = [0]

    def fuzz(strategy, label: str) -> None:
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case) -> None:
            calls[0] += 1
            try:
                response = case.call(base_url=server.url, timeout=10)
                if _refused_by_http_parser(response):
                    return
                case.validate_response(response, checks=CHECKS)
            except Exception as exc:  # schemathesis' FailureGroup, or a transport error
                failures.append(f"{label}: {exc}"[:3000])

        run()

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            try:
                fuzz(operation.as_strategy(generation_mode=mode), f"{operation.label} ({mode})")
            except Unsatisfiable:
                # No parameters nor body (/healthz, /metrics): nothing to make invalid.
                assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
    assert not failures, "\n\n".join(failures[:5])
    assert calls[0] > 100, calls
    log = server.log()
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]
