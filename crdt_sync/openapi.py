"""``GET /openapi.json``: an OpenAPI 3.1 description of every HTTP route.

Written by hand as data (the routes are raw handlers, not a framework that could
derive it) and checked against a live server by ``tests/integration/test_openapi.py``
with schemathesis: no 5xx, and every response matches what is written here. The two
WebSocket endpoints (``/yjs/{doc}``, ``/sync/v1/ws``) are described in ``info`` only:
OpenAPI has no way to describe a WebSocket.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import __version__
from .docnames import MAX_DOC_NAME_CHARS
from .inputs import MAX_INT_DIGITS, MAX_JSON_DEPTH

JSON = "application/json"

DESCRIPTION = f"""\
A Yjs-compatible collaboration server with a SyncFrame delta feed.

Every error is JSON `{{"error": code, "detail": text}}` (some errors add members,
named in their schema). Inputs follow one contract: integers in a query string or
header are ASCII digits only (at most {MAX_INT_DIGITS}); JSON bodies are UTF-8,
nested at most {MAX_JSON_DEPTH} deep, standard (no NaN/Infinity), and every string
must be valid Unicode (no lone surrogates); names (documents, record types and ids,
field names, client ids) may not contain control, format (bidi controls, zero-width
characters), surrogate, private-use, unassigned, line- or paragraph-separator
characters.

WebSockets (not described by OpenAPI): `ws://HOST:PORT/yjs/{{doc}}` speaks the
y-websocket protocol; `ws://HOST:PORT/sync/v1/ws?since=&t=&presence=` pushes
SyncFrames as JSON. Their close codes are listed in the README.

Auth: when the server runs with `--auth-secret`, `--auth-jwks` or `--auth-webhook`,
every route but `/healthz`, `/readyz`, `/openapi.json` and `/web/*` needs a token
(`Authorization: Bearer <jwt>` or `?token=`): missing, invalid or expired is 401
(with `WWW-Authenticate: Bearer`), a doc or mode outside the grant is 403, and past
`--rate-limit-http-requests` per `--rate-limit-window` the answer is 429 with
`Retry-After`. Routes that return many docs return only those the grant covers.
`/metrics` and `/admin/*` need an `admin` token. Without auth everyone is
`default`/`anonymous` with every right.
"""


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str, schema: str = "Error") -> dict[str, Any]:
    return _json(_ref(schema), description)


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_STRING = {"type": "string"}
_INT = {"type": "integer"}
_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_DOC_NAME_CHARS}
_SID_TEXT = {"type": "string", "pattern": f"^[0-9]{{1,{MAX_INT_DIGITS}}}$"}
_LIMIT = {"type": "integer", "minimum": 1, "maximum": 1000}
_TYPE_FILTER = {"type": "string", "pattern": "^[^/]+$", "maxLength": 256}

_DOC_PARAM = {
    "name": "doc",
    "in": "path",
    "required": True,
    "schema": _NAME,
    "description": "document name (may contain '/'; percent-encode it)",
}
_BAD_REQUEST = _error("a parameter or body refused by the input contract")
_STORE = _error("the store failed (disk full, read-only database)")
_THROTTLED = _error("too many requests: retry after `Retry-After` seconds", "Throttled")

_VERSION_PARAM = {
    "name": "v",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": f"^[0-9]{{1,{MAX_INT_DIGITS}}}$"},
    "description": "version id (a positive integer)",
}
_VERSION_INFO = {
    "type": "object",
    "required": ["version", "doc", "created_at", "authors", "label", "size", "state_vector"],
    "properties": {
        "version": {"type": "integer", "description": "store-assigned, increasing, never reused"},
        "doc": _STRING,
        "created_at": {"type": "integer", "description": "epoch milliseconds"},
        "authors": {
            "type": "array",
            "items": _STRING,
            "description": "actors who changed the doc since the version before",
        },
        "label": {"type": ["string", "null"]},
        "size": {"type": "integer", "description": "bytes of the stored state"},
        "state_vector": {"type": "string", "description": "base64 Yjs state vector"},
    },
}

SCHEMAS: dict[str, Any] = {
    "VersionInfo": _VERSION_INFO,
    "VersionList": {
        "type": "object",
        "required": ["versions", "next_cursor"],
        "properties": {
            "versions": {"type": "array", "items": _VERSION_INFO},
            "next_cursor": {"type": ["string", "null"]},
        },
    },
    "VersionRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"label": {"type": ["string", "null"], "maxLength": 200}},
    },
    "Version": {
        **_VERSION_INFO,
        "required": [*_VERSION_INFO["required"], "content"],
        "properties": {
            **_VERSION_INFO["properties"],
            "content": {"type": "object", "description": "every root type as JSON"},
            "record": {"type": "object", "description": "a record doc's fields"},
        },
    },
    "Restored": {
        "type": "object",
        "required": [
            "doc",
            "restored_from",
            "changed",
            "update_id",
            "before",
            "version",
            "state_vector",
        ],
        "properties": {
            "doc": _STRING,
            "restored_from": {"type": "integer"},
            "changed": {"type": "boolean", "description": "false: the content was the version's"},
            "update_id": {"type": ["integer", "null"]},
            "before": {
                "oneOf": [_VERSION_INFO, {"type": "null"}],
                "description": "the version taken of the state before the restore",
            },
            "version": {
                "oneOf": [_VERSION_INFO, {"type": "null"}],
                "description": "the version taken of the restored state",
            },
            "state_vector": {"type": "string", "description": "base64, after the restore"},
        },
    },
    "Error": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {"error": _STRING, "detail": _STRING},
    },
    "RevokeRequest": {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {
            "sub": {**_NAME, "description": "close every session of this actor"},
            "doc": {**_NAME, "description": "close every session on this doc"},
            "org": {**_NAME, "description": "the org (default: the admin's own; no other)"},
        },
    },
    "MutationError": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {
            "error": _STRING,
            "detail": _STRING,
            "field": {"type": "string", "description": "e.g. mutations[2].op"},
            "index": {"type": "integer", "description": "the mutation refused (413/422)"},
        },
    },
    "Throttled": {
        "type": "object",
        "required": ["error", "detail", "retry_after_ms"],
        "properties": {
            "error": {"enum": ["too_many_requests", "too_many_connections"]},
            "detail": _STRING,
            "retry_after_ms": _INT,
        },
    },
    "SinceTooOld": {
        "type": "object",
        "required": ["error", "detail", "oldest_sid", "newest_sid", "bootstrap", "next"],
        "properties": {
            "error": {"const": "since_too_old"},
            "detail": _STRING,
            "oldest_sid": _INT,
            "newest_sid": _INT,
            "bootstrap": _STRING,
            "next": {**_INT, "description": "bootstrap, then follow from at least this sid"},
            "up_to_date": {"const": False},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": _STRING,
            "rooms": _INT,
            "connections": _INT,
            "frame_subscribers": _INT,
        },
    },
    "Frame": {
        "type": "object",
        "required": ["sid", "t", "id", "op", "p", "who", "at", "ctx"],
        "properties": {
            "sid": _INT,
            "t": _STRING,
            "id": _STRING,
            "op": {"enum": ["i", "u", "d"]},
            "p": {"type": "object"},
            "who": {"type": ["string", "null"]},
            "at": _INT,
            "ctx": {
                "type": "object",
                "properties": {"client_tx_id": {"type": ["string", "null"]}},
            },
            "tx": {
                "type": "string",
                "description": "the mutation request that made it (its frames share it)",
            },
        },
    },
    "Mutation": {
        "type": "object",
        "required": ["t", "id", "op"],
        "additionalProperties": False,
        "properties": {
            "t": {**_TYPE_FILTER, "minLength": 1},
            "id": {"type": "string", "minLength": 1},
            "op": {"enum": ["i", "u", "d"]},
            "p": {"type": "object", "description": "fields (u: null removes one)"},
            "client_tx_id": {"type": "string", "minLength": 1, "maxLength": 256},
            "base_sid": {"type": "integer", "minimum": 0},
        },
    },
    "MutationRequest": {
        "type": "object",
        "required": ["mutations"],
        "additionalProperties": False,
        "properties": {
            "mutations": {"type": "array", "minItems": 1, "items": _ref("Mutation")},
            "base_sid": {"type": "integer", "minimum": 0},
            "client_id": {"type": "string", "minLength": 1, "maxLength": 200},
        },
    },
    "MutationResult": {
        "type": "object",
        "required": ["index", "t", "id", "op", "status"],
        "properties": {
            "index": _INT,
            "t": _STRING,
            "id": _STRING,
            "op": {"enum": ["i", "u", "d"]},
            "status": {"enum": [200, 201, 403, 404, 409, 413, 422, 500, 503]},
            "sid": {"type": ["integer", "null"]},
            "client_tx_id": {"type": ["string", "null"]},
            "conflicts": {"type": "array", "items": _STRING},
            "overwritten": {"type": "object"},
            "replayed": {"type": "boolean"},
            "tx": _STRING,
            "error": _STRING,
            "detail": _STRING,
        },
    },
    "DocList": {
        "type": "object",
        "required": ["docs", "next_cursor"],
        "properties": {
            "docs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "size", "updated_at", "update_count"],
                    "properties": {
                        "name": _STRING,
                        "size": _INT,
                        "updated_at": {"type": ["number", "string", "null"]},
                        "update_count": _INT,
                    },
                },
            },
            "next_cursor": {"type": ["string", "null"]},
        },
    },
}


def _health(path: str, summary: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "operationId": path.strip("/"),
            "responses": {
                "200": _json(_ref("Health"), "ok"),
                "503": _json(_ref("Health"), "starting, shutting down or degraded"),
            },
        }
    }


PATHS: dict[str, Any] = {
    "/healthz": _health("/healthz", "liveness: the store accepts writes, every loop is alive"),
    "/readyz": _health("/readyz", "readiness for load balancers"),
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "operationId": "metrics",
            "responses": {
                "200": {
                    "description": "text exposition format",
                    "content": {"text/plain": {"schema": _STRING}},
                }
            },
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "this document",
            "operationId": "openapi",
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
        }
    },
    "/docs": {
        "get": {
            "summary": "list documents",
            "operationId": "listDocs",
            "parameters": [
                _query("prefix", {"type": "string", "maxLength": 512}, "name prefix"),
                _query("limit", _LIMIT, "page size (default 100)"),
                _query("cursor", _STRING, "next_cursor of the previous page"),
            ],
            "responses": {"200": _json(_ref("DocList"), "a page"), "400": _BAD_REQUEST},
        }
    },
    "/docs/{doc}": {
        "parameters": [_DOC_PARAM],
        "get": {
            "summary": "the document's root types as JSON",
            "operationId": "getDoc",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["name", "content"],
                        "properties": {"name": _STRING, "content": {"type": "object"}},
                    },
                    "the document",
                ),
                "400": _BAD_REQUEST,
                "404": _error("no such document"),
                "500": _error("the stored document cannot be loaded (doc_load_failed)"),
            },
        },
        "delete": {
            "summary": "remove the document and its history",
            "operationId": "deleteDoc",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["name", "deleted"],
                        "properties": {"name": _STRING, "deleted": {"const": True}},
                    },
                    "deleted",
                ),
                "400": _BAD_REQUEST,
                "404": _error("no such document"),
                "503": _STORE,
            },
        },
    },
    "/docs/{doc}/update": {
        "parameters": [_DOC_PARAM],
        "get": {
            "summary": "the state as a binary Yjs update",
            "operationId": "getUpdate",
            "parameters": [
                _query("sv", _STRING, "base64 state vector: only what that state lacks")
            ],
            "responses": {
                "200": {
                    "description": "a Yjs update",
                    "content": {"application/octet-stream": {"schema": _STRING}},
                },
                "400": _BAD_REQUEST,
                "404": _error("no such document"),
                "500": _error("the stored document cannot be loaded (doc_load_failed)"),
            },
        },
        "post": {
            "summary": "apply a binary Yjs update (durable before 200)",
            "operationId": "postUpdate",
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["name", "update_id", "applied"],
                        "properties": {
                            "name": _STRING,
                            "update_id": {"type": ["integer", "null"]},
                            "applied": {"type": "boolean"},
                        },
                    },
                    "applied (or nothing to apply)",
                ),
                "400": _error("not a Yjs update (invalid_update)"),
                "413": _error("larger than --max-message-bytes"),
                "500": _error("the stored document cannot be loaded (doc_load_failed)"),
                "503": _STORE,
            },
        },
    },
    "/docs/{doc}/versions": {
        "parameters": [_DOC_PARAM],
        "get": {
            "summary": "the document's versions, newest first",
            "operationId": "listVersions",
            "parameters": [
                _query("limit", _LIMIT, "page size (default 50)"),
                _query("cursor", _SID_TEXT, "next_cursor of the previous page"),
            ],
            "responses": {
                "200": _json(_ref("VersionList"), "a page"),
                "400": _BAD_REQUEST,
                "404": _error("no such document"),
                "503": _STORE,
            },
        },
        "post": {
            "summary": "take a version of the document now",
            "operationId": "createVersion",
            "requestBody": {
                "required": False,
                "content": {JSON: {"schema": _ref("VersionRequest")}},
            },
            "responses": {
                "201": _json(_ref("VersionInfo"), "the version taken"),
                "400": _error("a bad label or body (invalid_label, invalid_json)"),
                "404": _error("no such document"),
                "413": _error("a body larger than 4096 bytes"),
                "415": _error("a body that is not Content-Type: application/json"),
                "500": _error("the stored document cannot be loaded (doc_load_failed)"),
                "503": _STORE,
            },
        },
    },
    "/docs/{doc}/versions/{v}": {
        "parameters": [_DOC_PARAM, _VERSION_PARAM],
        "get": {
            "summary": "a version: its info and content (or its state as a Yjs update)",
            "operationId": "getVersion",
            "parameters": [
                _query(
                    "format",
                    {"enum": ["json", "binary"]},
                    "binary: the state as a Yjs update (as Accept: application/octet-stream)",
                )
            ],
            "responses": {
                "200": {
                    "description": "the version",
                    "content": {
                        JSON: {"schema": _ref("Version")},
                        "application/octet-stream": {"schema": _STRING},
                    },
                },
                "400": _error("a bad version id or format (invalid_version, invalid_parameter)"),
                "404": _error("no such version of this document"),
                "503": _STORE,
            },
        },
    },
    "/docs/{doc}/versions/{v}/restore": {
        "parameters": [_DOC_PARAM, _VERSION_PARAM],
        "post": {
            "summary": "make the document's content the version's again (a forward change)",
            "operationId": "restoreVersion",
            "responses": {
                "200": _json(_ref("Restored"), "restored; live editors got it as an update"),
                "400": _error("a bad version id (invalid_version)"),
                "404": _error("no such document or version"),
                "413": _error("the restore would grow the document past --max-doc-bytes"),
                "500": _error("the stored document cannot be loaded (doc_load_failed)"),
                "503": _STORE,
            },
        },
    },
    "/sync/v1/mutations": {
        "post": {
            "summary": "apply mutations to records",
            "operationId": "mutations",
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": _ref("MutationRequest")}},
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["results", "tx"],
                        "properties": {
                            "results": {"type": "array", "items": _ref("MutationResult")},
                            "tx": {
                                **_STRING,
                                "description": "the request's tx id, shared by its frames",
                            },
                        },
                    },
                    "one result per mutation, in order",
                ),
                "400": _error(
                    "malformed request (invalid_json, invalid_mutation)", "MutationError"
                ),
                "413": _error(
                    "body past --max-message-bytes, or a mutation past --max-mutation-bytes",
                    "MutationError",
                ),
                "422": _error("a mutation past --max-mutation-fields", "MutationError"),
                "503": _STORE,
            },
        }
    },
    "/sync/v1/delta": {
        "get": {
            "summary": "frames after since",
            "operationId": "delta",
            "parameters": [
                _query("since", _SID_TEXT, "sid (default 0)"),
                _query("limit", _LIMIT, "page size (default 100)"),
                _query("t", _TYPE_FILTER, "record type"),
                _query("live", {"enum": ["0", "1", "false", "true"]}, "1: hold until a frame"),
                _query(
                    "timeout_ms",
                    {"type": "string", "pattern": "^[0-9]+$"},
                    "longest wait with live=1 (default 20000, at most --max-long-poll-ms)",
                ),
                _query("client_id", _STRING, "who is throttled"),
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["frames", "next", "more", "up_to_date"],
                        "properties": {
                            "frames": {"type": "array", "items": _ref("Frame")},
                            "next": _INT,
                            "more": {"type": "boolean"},
                            "up_to_date": {"type": "boolean"},
                        },
                    },
                    "a page of frames (more: a fixed page, with ETag and immutable "
                    "Cache-Control; else the tail, no-store)",
                ),
                "304": {"description": "If-None-Match names this fixed page's ETag"},
                "400": _BAD_REQUEST,
                "410": _error("since is outside the retained log", "SinceTooOld"),
                "429": _THROTTLED,
                "503": _error("the store failed, or too many long-polls (Retry-After)"),
            },
        }
    },
    "/sync/v1/records": {
        "get": {
            "summary": "the current projection of every live record",
            "operationId": "records",
            "parameters": [
                _query("t", _TYPE_FILTER, "record type"),
                _query("limit", _LIMIT, "page size (default 100)"),
                _query("cursor", _STRING, "next_cursor of the previous page"),
                _query("client_id", _STRING, "who is throttled"),
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["records", "sid", "next_cursor"],
                        "properties": {
                            "records": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["t", "id", "fields", "sid"],
                                    "properties": {
                                        "t": _STRING,
                                        "id": _STRING,
                                        "fields": {"type": "object"},
                                        "sid": _INT,
                                    },
                                },
                            },
                            "sid": _INT,
                            "next_cursor": {"type": ["string", "null"]},
                        },
                    },
                    "a page of records",
                ),
                "400": _BAD_REQUEST,
                "429": _THROTTLED,
                "503": _STORE,
            },
        }
    },
    "/sync/v1/events": {
        "get": {
            "summary": "the frame feed as Server-Sent Events (a stream that does not end)",
            "operationId": "events",
            "parameters": [
                _query("since", _SID_TEXT, "sid (default: from now on)"),
                _query("t", _TYPE_FILTER, "record type"),
                _query("presence", {"enum": ["all"]}, "push every record's presence"),
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": _SID_TEXT,
                    "description": "resume point (wins over since)",
                },
            ],
            "responses": {
                "200": {
                    "description": "`id:` sid, `data:` frame",
                    "content": {"text/event-stream": {"schema": _STRING}},
                },
                "400": _BAD_REQUEST,
                "410": _error("since is outside the retained log", "SinceTooOld"),
                "503": _error("shutting down, or the store failed"),
            },
        }
    },
    "/sync/v1/presence/{t}/{id}": {
        "get": {
            "summary": "who is in the record's room",
            "operationId": "presence",
            "parameters": [
                {"name": "t", "in": "path", "required": True, "schema": _TYPE_FILTER},
                {"name": "id", "in": "path", "required": True, "schema": _NAME},
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["t", "id", "present"],
                        "properties": {
                            "t": _STRING,
                            "id": _STRING,
                            "present": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                    "awareness states of the record's room",
                ),
                "400": _BAD_REQUEST,
            },
        }
    },
}

PATHS["/admin/revoke"] = {
    "post": {
        "summary": "close every live connection of an actor, a doc or the whole org (admin)",
        "operationId": "admin_revoke",
        "requestBody": {"required": True, "content": {JSON: {"schema": _ref("RevokeRequest")}}},
        "responses": {
            "200": _json(
                {
                    "type": "object",
                    "required": ["revoked"],
                    "properties": {"revoked": {"type": "integer", "minimum": 0}},
                },
                "how many connections were closed (4401)",
            ),
            "400": _error("malformed request (invalid_json, invalid_request)"),
            "413": _error("body too large"),
        },
    }
}

_DELIVERY = {
    "type": "object",
    "required": ["id", "webhook_id", "endpoint", "org", "first_sid", "last_sid", "attempts"],
    "properties": {
        "id": {"type": "integer"},
        "webhook_id": {"type": "string", "description": "{endpoint}:{org}:{first_sid}-{last_sid}"},
        "endpoint": {"type": "string"},
        "org": {"type": "string"},
        "first_sid": {"type": "integer"},
        "last_sid": {"type": "integer"},
        "frames": {"type": "integer"},
        "attempts": {"type": "integer", "description": "failed attempts so far"},
        "first_attempt_at": {"type": ["integer", "null"]},
        "next_attempt_at": {"type": "integer"},
        "in_flight": {"type": "boolean"},
        "last_error": {"type": ["string", "null"]},
        "last_status": {"type": ["integer", "null"]},
    },
}
_REPLAYED = _json(
    {
        "type": "object",
        "required": ["replayed"],
        "properties": {"replayed": {"type": "integer", "minimum": 0}},
    },
    "how many parked deliveries were queued again (same webhook-id)",
)

PATHS["/admin/webhooks"] = {
    "get": {
        "summary": "outgoing webhooks of the admin's org: endpoints with cursor and backlog, "
        "pending and parked deliveries (admin)",
        "operationId": "admin_webhooks",
        "responses": {
            "200": _json(
                {
                    "type": "object",
                    "required": ["endpoints", "pending", "parked"],
                    "properties": {
                        "endpoints": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["id", "url", "types", "orgs"],
                                "properties": {
                                    "id": {"type": "string"},
                                    "url": {"type": "string"},
                                    "types": {"type": "array", "items": {"type": "string"}},
                                    "orgs": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "org": {"type": "string"},
                                                "cursor": {"type": "integer"},
                                                "backlog": {"type": "integer"},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                        "pending": {"type": "array", "items": _DELIVERY},
                        "parked": {"type": "array", "items": _DELIVERY},
                    },
                },
                "the endpoints and their deliveries",
            ),
            "503": _error("the store cannot be read (store_unavailable)"),
        },
    }
}

PATHS["/admin/webhooks/parked/replay"] = {
    "post": {
        "summary": "queue every parked webhook delivery of the admin's org again (admin)",
        "operationId": "admin_webhooks_replay_all",
        "responses": {
            "200": _REPLAYED,
            "503": _error("the store cannot be written (store_unavailable)"),
        },
    }
}

PATHS["/admin/webhooks/parked/{id}/replay"] = {
    "post": {
        "summary": "queue one parked webhook delivery again, same webhook-id (admin)",
        "operationId": "admin_webhooks_replay",
        "parameters": [
            {
                "name": "id",
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
                "description": "the delivery's id (GET /admin/webhooks)",
            }
        ],
        "responses": {
            "200": _REPLAYED,
            "400": _error("id is not a delivery id (invalid_request)"),
            "404": _error("no such parked delivery in this org (not_found)"),
            "503": _error("the store cannot be written (store_unavailable)"),
        },
    }
}

PATHS["/admin/inspect"] = {
    "get": {
        "summary": "this node's rooms of the admin's org, its newest frames, store and node figures"
        " (admin; what /inspect shows)",
        "operationId": "admin_inspect",
        "parameters": [
            {
                "name": key,
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 0, "maximum": most},
                "description": f"list at most this many {key} (default {most})",
            }
            for key, most in (("rooms", 100), ("frames", 50))
        ],
        "responses": {
            "200": _json(
                {
                    "type": "object",
                    "required": ["node", "at", "org", "rooms", "frames", "store", "node_totals"],
                    "properties": {
                        "node": _STRING,
                        "at": {"type": "integer"},
                        "org": _STRING,
                        "rooms": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "name": _STRING,
                                    "connections": {"type": "integer"},
                                    "awareness": {"type": "integer"},
                                    "size": {"type": "integer"},
                                },
                            },
                        },
                        "rooms_total": {"type": "integer"},
                        "frames": {"type": "array", "items": {"type": "object"}},
                        "newest_sid": {"type": "integer"},
                        "store": {"type": "object"},
                        "node_totals": {"type": "object"},
                    },
                },
                "the inspector's figures (newest frames first)",
            ),
            "400": _error("rooms or frames out of range (invalid_request)"),
            "503": _error("the store cannot be read (store_unavailable)"),
        },
    }
}

#: What every operation may also answer (the front door, not the handler).
COMMON_RESPONSES: dict[str, Any] = {
    "405": _error("method not allowed"),
}
#: Routes the front door lets through without a token.
PUBLIC = ("/healthz", "/readyz", "/openapi.json")
#: What the front door may answer on every other route.
AUTH_RESPONSES: dict[str, Any] = {
    "401": _error("no token, or a missing, malformed, forged or expired one (auth on)"),
    "403": _error("the token's grant does not cover this doc or mode"),
    "429": _error(
        "past --rate-limit-http-requests, or too many connections: see Retry-After", "Throttled"
    ),
}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a fresh dict each call)."""
    paths: dict[str, Any] = {}
    for path, item in PATHS.items():
        paths[path] = {}
        for method, operation in item.items():
            if method == "parameters":
                paths[path][method] = operation
                continue
            responses = {**operation["responses"]}
            if method != "get" or path not in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
                responses.setdefault("503", _error("the server is shutting down"))
            extra: dict[str, Any] = {}
            if path not in PUBLIC:
                for status, response in AUTH_RESPONSES.items():
                    responses.setdefault(status, response)
                extra["security"] = [{"bearer": []}]
            if method == "post" and (path == "/sync/v1/mutations" or path.startswith("/admin/")):
                responses.setdefault(
                    "415", _error("the body is not Content-Type: application/json")
                )
            paths[path][method] = {**operation, "responses": responses, **extra}
    return {
        "openapi": "3.1.0",
        "info": {"title": "crdt-sync", "version": __version__, "description": DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


async def endpoint(request: Request) -> Response:
    """``GET /openapi.json``."""
    return JSONResponse(document())
