"""The document HTTP API: read and write docs without speaking the Yjs protocol.

=========================  =====================================================
``GET /docs``              names, sizes, ``updated_at``; ``?prefix=&limit=&cursor=``
``GET /docs/{doc}``        JSON of the doc's root types (text as string)
``GET /docs/{doc}/update`` the state as a binary Yjs update; ``?sv=`` (base64) = diff
``POST /docs/{doc}/update`` apply a binary update: durable before 2xx, seen live
``DELETE /docs/{doc}``     remove doc and history; its clients are closed with 4404
=========================  =====================================================

A doc read over HTTP is loaded into its room exactly as for a WebSocket client (so
there is one copy of its state) and unloaded after ``--room-idle-seconds``; a read
of a doc that does not exist answers 404 from the store without loading a room.
Past ``--max-rooms`` (none idle) a request that needs a room gets 503
``too_many_rooms``; an update whose missing dependencies put the room past
``--max-pending-bytes`` gets 413 ``pending_too_large``.

Every handler works in the caller's org (``principal_of(request.scope)``): the same
doc name in two orgs is two docs. The front door has checked the grant for the
doc (read for GET, write for POST/DELETE); ``GET /docs`` lists only the docs the
grant covers (a page may then hold fewer than ``limit``; ``next_cursor`` still
pages on).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from persistence.store import StoreError
from rooms.codec import (
    LARGE_UPDATE_BYTES,
    InvalidPayload,
    ProtocolError,
    check_update,
    decode_state_vector,
)
from rooms.limits import LimitExceeded
from rooms.manager import TooManyRooms
from rooms.room import InvalidUpdate, Origin, Room, RoomLoadError

from .auth.principal import principal_of
from .docnames import InvalidDocName, split_record, validate_doc_name
from .errors import store_failure
from .http_api import ApiError, int_param, read_body, routes
from .inputs import InputError, check_name
from .records.projection import doc_to_json

log = logging.getLogger(__name__)

MAX_LIST_LIMIT = 1000


def decode_base64(raw: str, name: str) -> bytes:
    text = raw.strip().replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_parameter", f"{name} is not valid base64") from None


class DocsApi:
    """Handlers of the document API, sharing the app's runtime."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    def routes(self) -> list[Route]:
        return routes(
            self.runtime,
            [
                ("GET", "/docs", self.list_docs),
                ("GET", "/docs/{doc:name}/update", self.get_update),
                ("POST", "/docs/{doc:name}/update", self.post_update),
                ("GET", "/docs/{doc:name}", self.get_doc),
                ("DELETE", "/docs/{doc:name}", self.delete_doc),
            ],
        )

    def doc_name(self, request: Request) -> str:
        try:
            return validate_doc_name(request.path_params["doc"])
        except InvalidDocName as exc:
            raise ApiError(400, "invalid_doc_name", str(exc)) from None

    @asynccontextmanager
    async def open_room(self, org: str, name: str, *, must_exist: bool) -> AsyncIterator[Room]:
        """The doc's room, loaded and held (never unloaded to make room for another)
        while the request uses it; released (idle unload scheduled) on exit.

        Args:
            must_exist: A read: 404 for a doc that neither is loaded nor stored, found
                from the store without loading a room for it.
        """
        manager = self.runtime.manager
        if must_exist and (org, name) not in manager.rooms:
            try:
                stored = await self.runtime.store.has_doc(org, name)
            except StoreError as exc:
                raise ApiError(503, "store_unavailable", f"cannot read: {exc}") from None
            if not stored:
                raise ApiError(404, "not_found", f"no document named {name!r}")
        try:
            room = await manager.hold(org, name)
        except RoomLoadError as exc:
            if (cause := store_failure(exc)) is not None:
                raise ApiError(503, "store_unavailable", f"cannot read: {cause}") from None
            raise ApiError(500, "doc_load_failed", f"document {name!r} cannot be loaded") from exc
        except TooManyRooms as exc:
            raise ApiError(503, "too_many_rooms", str(exc)) from None
        try:
            if must_exist and room.is_empty:
                raise ApiError(404, "not_found", f"no document named {name!r}")
            yield room
        finally:
            manager.unhold(room)

    # -- handlers ----------------------------------------------------------------

    async def list_docs(self, request: Request) -> Response:
        principal = principal_of(request.scope)
        try:
            prefix = check_name(
                request.query_params.get("prefix", ""), "prefix", max_chars=512, allow_empty=True
            )
        except InputError as exc:
            raise ApiError(400, "invalid_parameter", exc.detail) from None
        limit = int_param(request, "limit", 100, 1, MAX_LIST_LIMIT)
        cursor = request.query_params.get("cursor") or None
        try:
            docs, next_cursor = await self.runtime.store.list_docs(
                principal.org, prefix=prefix, limit=limit, cursor=cursor
            )
        except ValueError as exc:
            raise ApiError(400, "invalid_parameter", f"cursor: {exc}") from None
        return JSONResponse(
            {
                "docs": [
                    {
                        "name": d.name,
                        "size": d.size,
                        "updated_at": d.updated_at,
                        "update_count": d.update_count,
                    }
                    for d in docs
                    if principal.grant.covers(d.name)
                ],
                "next_cursor": next_cursor,
            }
        )

    async def get_doc(self, request: Request) -> Response:
        name = self.doc_name(request)
        org = principal_of(request.scope).org
        async with self.open_room(org, name, must_exist=True) as room:
            return JSONResponse({"name": name, "content": doc_to_json(room.doc)})

    async def get_update(self, request: Request) -> Response:
        name = self.doc_name(request)
        raw_sv = request.query_params.get("sv")
        state_vector = decode_base64(raw_sv, "sv") if raw_sv else None
        if state_vector is not None:
            try:
                decode_state_vector(state_vector)
            except ProtocolError:
                raise ApiError(400, "invalid_parameter", "sv is not a Yjs state vector") from None
        org = principal_of(request.scope).org
        async with self.open_room(org, name, must_exist=True) as room:
            try:
                update = room.doc.get_update(state_vector)
            except Exception:
                raise ApiError(400, "invalid_parameter", "sv is not a Yjs state vector") from None
        return Response(update, media_type="application/octet-stream")

    async def post_update(self, request: Request) -> Response:
        name = self.doc_name(request)
        limit = self.runtime.settings.max_message_bytes
        body = await read_body(request, limit)
        if not body:
            raise ApiError(400, "invalid_update", "empty body: expected a binary Yjs update")
        try:
            if len(body) > LARGE_UPDATE_BYTES:
                await anyio.to_thread.run_sync(check_update, body)
            else:
                check_update(body)
        except InvalidPayload as exc:
            raise ApiError(400, "invalid_update", f"not a valid Yjs update: {exc}") from None
        principal = principal_of(request.scope)
        async with self.open_room(principal.org, name, must_exist=False) as room:
            try:
                appended = await room.apply_update(body, actor=principal.actor, origin=Origin.HTTP)
                if appended is None:
                    return JSONResponse({"name": name, "update_id": None, "applied": False})
                committed = await appended.durable
                if room.store_failed:
                    # An earlier write of this doc failed: the log lacks what this
                    # update may depend on. Acknowledged means loadable, so the whole
                    # state is stored first.
                    await room.compact()
            except InvalidUpdate as exc:
                raise ApiError(400, "invalid_update", f"not a valid Yjs update: {exc}") from None
            except LimitExceeded as exc:
                raise ApiError(413, exc.error, exc.detail) from None
            except StoreError as exc:
                raise ApiError(503, "store_unavailable", f"update not stored: {exc}") from None
            self.runtime.manager.after_update(room)
        return JSONResponse({"name": name, "update_id": committed.update_id, "applied": True})

    async def delete_doc(self, request: Request) -> Response:
        name = self.doc_name(request)
        principal = principal_of(request.scope)
        org, actor = principal.org, principal.actor
        try:
            if split_record(name) is not None:
                # A record: its deletion is a "d" frame, logged in the same transaction.
                deleted = await self.runtime.feed.mutations.delete(org, name, actor=actor)
                existed = deleted is not None
            else:
                existed = await self.runtime.manager.delete(org, name)
        except StoreError as exc:
            raise ApiError(503, "store_unavailable", f"delete not stored: {exc}") from None
        if not existed:
            raise ApiError(404, "not_found", f"no document named {name!r}")
        log.info("doc=%r org=%r deleted over HTTP by %r", name, org, actor)
        return JSONResponse({"name": name, "deleted": True})
