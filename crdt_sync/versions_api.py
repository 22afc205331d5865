"""The version API: list, read, take and restore versions of a doc (issue 15, item 4).

============================================  ==========================================
``GET /docs/{doc}/versions``                  newest first; ``?limit=&cursor=``
``GET /docs/{doc}/versions/{v}``              info and content as JSON; with ``Accept:
                                              application/octet-stream`` or
                                              ``?format=binary`` the state as a Yjs update
``POST /docs/{doc}/versions``                 take one now; body ``{"label": "..."}``
                                              (optional) -> 201
``POST /docs/{doc}/versions/{v}/restore``     make the doc's content the version's again
============================================  ==========================================

A restore is a forward change (:mod:`crdt_sync.version_restore`) applied through the
live room as an HTTP update (``Origin.HTTP``), exactly as ``POST /docs/{doc}/update``
applies one: connected editors receive it as a normal update, a record doc gets its
SyncFrame from the coalescer, and it is durable before the answer. If the doc changed
since its newest version, a version of the state before the restore is taken first
(so the restore itself can be undone by restoring that one); after it, a version of
the restored state is taken and returned.

The front door has checked the grant for the doc: read for ``GET``, write for
``POST``. Errors: 400 (bad version id, cursor, label, body), 404 (no such doc or
version), 415 (a body that is not JSON), 503 (store unavailable).
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import anyio
from pycrdt import Doc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from persistence.store import StoreError, VersionInfo
from persistence.versions import MAX_LABEL_CHARS
from rooms.codec import LARGE_UPDATE_BYTES
from rooms.limits import LimitExceeded
from rooms.room import InvalidUpdate, Origin
from rooms.strict_json import InputError, parse_json

from .auth.principal import principal_of
from .docnames import split_record
from .docs_api import DocsApi
from .http_api import ApiError, int_param, read_body, routes
from .inputs import check_name, parse_uint
from .records.projection import RootTypes, doc_to_json, project
from .version_restore import restore_update

log = logging.getLogger(__name__)

MAX_LIST_LIMIT = 1000
#: Largest body of ``POST /docs/{doc}/versions``.
MAX_BODY_BYTES = 4096
_BINARY = "application/octet-stream"


def info_json(info: VersionInfo) -> dict[str, Any]:
    """A version's info as the API shows it."""
    return {
        "version": info.version,
        "doc": info.name,
        "created_at": info.created_at,
        "authors": list(info.authors),
        "label": info.label,
        "size": info.size,
        "state_vector": base64.b64encode(info.state_vector).decode("ascii"),
    }


def content_json(name: str, state: bytes) -> dict[str, Any]:
    """The content of a state: every root as JSON, and a record doc's fields."""
    doc = Doc()
    doc.apply_update(state)
    body: dict[str, Any] = {"content": doc_to_json(doc)}
    if split_record(name) is not None:
        body["record"] = project(doc, RootTypes(name))
    return body


def _version_id(raw: str) -> int:
    try:
        value = parse_uint(raw, "version")
    except InputError as exc:
        raise ApiError(400, "invalid_version", exc.detail) from None
    if value < 1:
        raise ApiError(400, "invalid_version", "version must be a positive integer")
    return value


def _cursor(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        value = parse_uint(raw, "cursor")
    except InputError:
        raise ApiError(400, "invalid_parameter", "cursor is not one this API returned") from None
    if value < 1:
        raise ApiError(400, "invalid_parameter", "cursor is not one this API returned")
    return value


def _label(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, "invalid_label", "label must be a string or null")
    if len(value) > MAX_LABEL_CHARS:
        raise ApiError(400, "invalid_label", f"label is longer than {MAX_LABEL_CHARS} characters")
    try:
        return check_name(value, "label", max_chars=MAX_LABEL_CHARS)
    except InputError as exc:
        raise ApiError(400, "invalid_label", exc.detail) from None


def _wants_binary(request: Request) -> bool:
    fmt = request.query_params.get("format")
    if fmt is not None:
        if fmt not in ("json", "binary"):
            raise ApiError(400, "invalid_parameter", "format must be json or binary")
        return fmt == "binary"
    accept = request.headers.get("accept", "")
    return _BINARY in accept and "application/json" not in accept


class VersionsApi:
    """Handlers of the version API, sharing the app's runtime (and the doc API's
    name rules and room handling)."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.docs = DocsApi(runtime)

    def routes(self) -> list[Route]:
        return routes(
            self.runtime,
            [
                ("POST", "/docs/{doc:name}/versions/{v}/restore", self.restore),
                ("GET", "/docs/{doc:name}/versions/{v}", self.get_version),
                ("GET", "/docs/{doc:name}/versions", self.list_versions),
                ("POST", "/docs/{doc:name}/versions", self.create),
            ],
        )

    async def _must_exist(self, org: str, name: str) -> None:
        """404 for a doc that is neither loaded nor stored."""
        if (org, name) in self.runtime.manager.rooms:
            return
        if not await self.runtime.store.has_doc(org, name):
            raise ApiError(404, "not_found", f"no document named {name!r}")

    # -- handlers ----------------------------------------------------------------

    async def list_versions(self, request: Request) -> Response:
        name = self.docs.doc_name(request)
        org = principal_of(request.scope).org
        limit = int_param(request, "limit", 50, 1, MAX_LIST_LIMIT)
        before = _cursor(request.query_params.get("cursor"))
        store = self.runtime.store
        await self._must_exist(org, name)
        page = await store.list_versions(org, name, before=before, limit=limit + 1)
        more = len(page) > limit
        page = page[:limit]
        return JSONResponse(
            {
                "versions": [info_json(v) for v in page],
                "next_cursor": str(page[-1].version) if more else None,
            }
        )

    async def get_version(self, request: Request) -> Response:
        name = self.docs.doc_name(request)
        org = principal_of(request.scope).org
        version = _version_id(request.path_params["v"])
        binary = _wants_binary(request)
        found = await self.runtime.store.get_version(org, name, version)
        if found is None:
            raise ApiError(404, "not_found", f"document {name!r} has no version {version}")
        info, state = found
        if binary:
            return Response(state, media_type=_BINARY)
        if len(state) > LARGE_UPDATE_BYTES:
            content = await anyio.to_thread.run_sync(content_json, name, state)
        else:
            content = content_json(name, state)
        return JSONResponse({**info_json(info), **content})

    async def create(self, request: Request) -> Response:
        name = self.docs.doc_name(request)
        principal = principal_of(request.scope)
        actor = principal.actor
        label = _label(await self._body(request))
        async with self.docs.open_room(principal.org, name, must_exist=True) as room:
            info = await self.runtime.versions.take(room, label=label)
        if info is None:  # loaded but never stored (nothing written yet)
            raise ApiError(404, "not_found", f"no document named {name!r}")
        log.info("doc=%r org=%r version %d taken by %r", name, principal.org, info.version, actor)
        return JSONResponse(info_json(info), status_code=201)

    async def restore(self, request: Request) -> Response:
        name = self.docs.doc_name(request)
        principal = principal_of(request.scope)
        org, actor = principal.org, principal.actor
        version = _version_id(request.path_params["v"])
        store = self.runtime.store
        keeper = self.runtime.versions
        found = await store.get_version(org, name, version)
        if found is None:
            raise ApiError(404, "not_found", f"document {name!r} has no version {version}")
        _, state = found
        async with self.docs.open_room(org, name, must_exist=True) as room:
            current = room.doc.get_update()
            if len(current) + len(state) > LARGE_UPDATE_BYTES:
                update = await anyio.to_thread.run_sync(restore_update, current, state)
            else:
                update = restore_update(current, state)
            before = after = update_id = None
            if update is not None:
                if await self._changed_since_newest(room):
                    # Edits made meanwhile merge with the restore as concurrent edits.
                    label = f"before restore of version {version}"
                    before = await keeper.take(room, label=label)
                update_id = await self._apply(room, update, actor)
                after = await keeper.take(room, label=f"restore of version {version}")
            state_vector = room.doc.get_state()
        log.info(
            "doc=%r org=%r restored to version %d by %r (update %s)",
            name,
            org,
            version,
            actor,
            update_id,
        )
        return JSONResponse(
            {
                "doc": name,
                "restored_from": version,
                "changed": update is not None,
                "update_id": update_id,
                "before": info_json(before) if before is not None else None,
                "version": info_json(after) if after is not None else None,
                "state_vector": base64.b64encode(state_vector).decode("ascii"),
            }
        )

    # -- helpers -----------------------------------------------------------------

    async def _apply(self, room: Any, update: bytes, actor: str) -> int | None:
        """Apply the restore as an HTTP update would be: through the live room, durable
        before the answer; its update id (``None``: it changed nothing)."""
        try:
            appended = await room.apply_update(update, actor=actor, origin=Origin.HTTP)
            if appended is None:
                return None
            committed = await appended.durable
            if room.store_failed:
                await room.compact()
        except InvalidUpdate as exc:  # cannot happen short of a pycrdt bug
            raise ApiError(500, "restore_failed", f"restore not applied: {exc}") from exc
        except LimitExceeded as exc:
            raise ApiError(413, exc.error, exc.detail) from None
        except StoreError as exc:
            raise ApiError(503, "store_unavailable", f"restore not stored: {exc}") from None
        self.runtime.manager.after_update(room)
        return committed.update_id

    async def _body(self, request: Request) -> Any:
        """The optional JSON body's ``label`` (``None`` without a body)."""
        body = await read_body(request, MAX_BODY_BYTES)
        if not body.strip():
            return None
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            raise ApiError(415, "unsupported_media_type", "the body must be application/json")
        try:
            value = parse_json(body, max_bytes=MAX_BODY_BYTES)
        except InputError as exc:
            raise ApiError(400, "invalid_json", exc.detail) from None
        if not isinstance(value, dict):
            raise ApiError(400, "invalid_json", 'the body must be a JSON object {"label": ...}')
        unknown = sorted(set(value) - {"label"})
        if unknown:
            raise ApiError(400, "invalid_json", f"unknown member {unknown[0]!r}")
        return value.get("label")

    async def _changed_since_newest(self, room: Any) -> bool:
        """Whether the doc may differ from its newest version (then the state before a
        restore is versioned first): changes through this node since, or a state
        vector that is not the newest version's (changes through other nodes)."""
        if self.runtime.versions.has_changes(room):
            return True
        newest = await self.runtime.store.list_versions(room.org, room.name, limit=1)
        return not newest or newest[0].state_vector != room.doc.get_state()
