"""The SyncFrame HTTP API: mutations, delta catch-up, record bootstrap, presence.

=================================  ==================================================
``POST /sync/v1/mutations``        ``{"mutations": [{t, id, op, p, client_tx_id}]}``
``GET /sync/v1/delta``             ``?since=&limit=&t=&live=&timeout_ms=`` → ``{frames, next,
                                   more, up_to_date}``; 410 (reset); 304 (cached page)
``GET /sync/v1/records``           ``?t=&cursor=&limit=`` → ``{records, sid, next_cursor}``
``GET /sync/v1/presence/{t}/{id}`` who is in the record's room
=================================  ==================================================

Every handler works in the caller's org (``principal_of(request.scope)``). The
front door admitted the request for ``read`` (``write`` for mutations) on no
single doc; here the frames and records returned are only those of docs the grant
covers, and each mutation is checked against its own doc: one outside the grant
gets its own result ``403 forbidden`` and is not applied (the batch goes on).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from persistence.store import Frame, StoreError
from rooms.frame_waiters import TooManyWaiters
from rooms.manager import ShuttingDown, TooManyRooms
from rooms.room import RoomLoadError

from .auth.principal import principal_of
from .docnames import InvalidDocName, validate_doc_name
from .errors import store_failure
from .http_api import ApiError, int_param, read_body, routes
from .inputs import InputError, check_name, parse_json, parse_uint
from .mutations import Mutation, MutationError, new_tx_id
from .records.pages import Page, read_page, tx_reach
from .records.wire import frame_dict

log = logging.getLogger(__name__)
audit = logging.getLogger("crdt_sync.audit")

MAX_DELTA_LIMIT = 1000
#: The wait of ``GET /sync/v1/delta?live=1`` without ``timeout_ms`` (at most --max-long-poll-ms).
DEFAULT_LONG_POLL_MS = 20_000
MAX_RECORDS_LIMIT = 1000
MAX_TX_ID_CHARS = 256
MAX_TYPE_CHARS = 256
MAX_CLIENT_ID_CHARS = 200
MAX_FIELD_NAME_CHARS = 256
#: Defaults of --max-mutation-fields / --max-mutation-bytes (for callers without settings).
MAX_MUTATION_FIELDS = 1000
MAX_MUTATION_BYTES = 1024 * 1024
OPS = ("i", "u", "d")


def client_key(request: Request) -> str:
    """Who a request comes from, for the per-client limits: the principal's actor
    (its address while auth is off), never something the client names itself (a
    ``client_id`` or ``X-Client-Id`` would let one client take any number of budgets).
    """
    client = request.client
    key = principal_of(request.scope).limit_key(client.host if client else None)
    return ":".join(key)


def parse_sid(raw: str | None, name: str) -> int | None:
    """A sid from a query parameter or header (``None`` if absent): an integer >= 0."""
    if raw is None or raw == "":
        return None
    try:
        return parse_uint(raw, name)
    except InputError:
        raise ApiError(
            400, "invalid_parameter", f"{name} must be a non-negative integer sid, got {raw[:40]!r}"
        ) from None


def record_type_error(raw: str) -> str | None:
    """Why ``raw`` is not a record type (a name without ``/``), or ``None``."""
    if "/" in raw:
        return "must be a record type (no '/')"
    try:
        check_name(raw, "record type", max_chars=MAX_TYPE_CHARS)
    except InputError as exc:
        return exc.detail
    return None


def parse_type(raw: str | None) -> str | None:
    """A record type filter (``None`` if absent)."""
    if raw is None or raw == "":
        return None
    why = record_type_error(raw)
    if why is not None:
        raise ApiError(400, "invalid_parameter", f"t: {why}")
    return raw


def too_old(since: int, oldest: int, newest: int, t: str | None) -> ApiError:
    bootstrap = "/sync/v1/records" + (f"?t={t}" if t else "")
    if since > newest:
        detail = f"since={since} is ahead of the newest frame ({newest}): the log was reset"
    else:
        detail = f"frames after sid {since} are no longer retained (oldest kept: {oldest + 1})"
    return ApiError(
        410,
        "since_too_old",
        f"{detail}; bootstrap from {bootstrap}",
        oldest_sid=oldest,
        newest_sid=newest,
        bootstrap=bootstrap,
        # Where to restart: bootstrap, then follow from the sid the bootstrap answers
        # (never below this one).
        next=newest,
        up_to_date=False,
    )


def parse_flag(raw: str | None, name: str) -> bool:
    """A boolean query parameter: ``1``/``true`` or ``0``/``false`` (absent: false)."""
    if raw is None or raw in ("", "0", "false"):
        return False
    if raw in ("1", "true"):
        return True
    raise ApiError(400, "invalid_parameter", f"{name} must be 1 or 0, got {raw[:40]!r}")


def etag_matches(header: str | None, etag: str) -> bool:
    """Whether ``If-None-Match: header`` names ``etag`` (weak comparison, RFC 9110)."""
    if not header:
        return False
    tags = [tag.strip() for tag in header.split(",")]
    return "*" in tags or any(tag.removeprefix("W/") == etag for tag in tags)


def _visible(frames: list[Frame], grant: Any) -> bool:
    return any(grant.covers(f"{f.t}/{f.id}") for f in frames)


def _next_sid(since: int, page: Page) -> int:
    """The cursor after ``page``: its last frame if it is cut at the limit, else the
    newest sid (every frame up to it was seen, of the page's type or not)."""
    if page.more:
        return page.frames[-1].sid
    return max(since, page.newest, page.frames[-1].sid if page.frames else 0)


def _encode_cursor(t: str, record_id: str) -> str:
    raw = json.dumps([t, record_id], separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        t, record_id = parse_json(raw, max_bytes=4096, max_depth=1, what="cursor")
        if isinstance(t, str) and isinstance(record_id, str):
            return t, record_id
    except (binascii.Error, InputError, ValueError, TypeError):
        pass
    raise ApiError(400, "invalid_parameter", "cursor is not one this server returned")


class SyncApi:
    """Handlers of the SyncFrame HTTP API, sharing the app's runtime."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    def routes(self) -> list[Route]:
        return routes(
            self.runtime,
            [
                ("POST", "/sync/v1/mutations", self.mutations),
                ("GET", "/sync/v1/delta", self.delta),
                ("GET", "/sync/v1/records", self.records),
                ("GET", "/sync/v1/presence/{t}/{id:name}", self.presence),
            ],
        )

    # -- reads -----------------------------------------------------------------------

    async def delta(self, request: Request) -> Response:
        """A page of frames after ``since``; with ``live=1`` held until one comes.

        Every page says ``next`` (the cursor to ask from next) and ``up_to_date``
        (it reached the newest frame). A page whose range is fixed (``more``: it
        ended at the limit) never changes: it has a strong ``ETag`` and may be
        cached (``Cache-Control: public, max-age, immutable``; ``If-None-Match``
        answers 304); the tail (``up_to_date``) is ``no-store``.
        """
        settings = self.runtime.settings
        since = parse_sid(request.query_params.get("since"), "since") or 0
        limit = int_param(request, "limit", 100, 1, MAX_DELTA_LIMIT)
        t = parse_type(request.query_params.get("t"))
        live = parse_flag(request.query_params.get("live"), "live")
        most = settings.max_long_poll_ms
        timeout_ms = int_param(request, "timeout_ms", min(DEFAULT_LONG_POLL_MS, most), 0, most)
        principal = principal_of(request.scope)
        org, grant = principal.org, principal.grant
        waiters = self.runtime.frame_waiters
        reach = tx_reach(settings.max_mutations)
        # Taken before the read: a commit after it sets the event (see FrameWaiters).
        changed = waiters.changed(org) if live else None
        with self.runtime.throttle.request(org, client_key(request), interval=not live):
            page = await read_page(self.runtime.store, org, since, limit=limit, t=t, reach=reach)
        if since < page.oldest or since > page.newest:
            raise too_old(since, page.oldest, page.newest, t)
        cursor = since
        if live and changed is not None:
            deadline = anyio.current_time() + timeout_ms / 1000
            try:
                waiters.acquire()
            except TooManyWaiters as exc:
                log.warning("GET /sync/v1/delta?live=1 -> 503: %s", exc)
                body = {"error": "too_many_long_polls", "detail": str(exc), "retry_after_ms": 1000}
                return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
            try:
                while not page.more and not _visible(page.frames, grant):
                    cursor = _next_sid(cursor, page)
                    left = deadline - anyio.current_time()
                    if left <= 0 or waiters.closed:
                        break
                    with anyio.move_on_after(left):
                        await changed.wait()
                    changed = waiters.changed(org)
                    # Every waiter of the org wakes at once: they read in turns, not
                    # refused (429) as a storm of new requests would be.
                    async with waiters.reads:
                        page = await read_page(
                            self.runtime.store, org, cursor, limit=limit, t=t, reach=reach
                        )
                    if not page.oldest <= cursor <= page.newest:
                        raise too_old(cursor, page.oldest, page.newest, t)
            finally:
                waiters.release()
        body = {
            "frames": [frame_dict(f) for f in page.frames if grant.covers(f"{f.t}/{f.id}")],
            "next": _next_sid(cursor, page),
            "more": page.more,
            "up_to_date": not page.more,
        }
        return self._cached(request, body, fixed=page.more)

    def _cached(self, request: Request, body: dict[str, Any], *, fixed: bool) -> Response:
        """``body`` with the caching headers of a delta page (see :meth:`delta`)."""
        max_age = self.runtime.settings.delta_cache_max_age
        headers: dict[str, str] = {}
        if not self.runtime.auth.open:
            # Pages are filtered by the caller's grant: a shared cache must key them on
            # the credentials, so that it never hands one tenant's page to another.
            headers["Vary"] = "Authorization, Cookie"
        if not fixed or max_age == 0:
            headers["Cache-Control"] = "no-store"
            return JSONResponse(body, headers=headers)
        content = JSONResponse(body).body
        etag = '"' + hashlib.sha256(content).hexdigest()[:32] + '"'
        headers["ETag"] = etag
        headers["Cache-Control"] = f"public, max-age={max_age}, immutable"
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return Response(content, media_type="application/json", headers=headers)

    async def records(self, request: Request) -> Response:
        t = parse_type(request.query_params.get("t"))
        limit = int_param(request, "limit", 100, 1, MAX_RECORDS_LIMIT)
        cursor = request.query_params.get("cursor") or None
        after = _decode_cursor(cursor) if cursor else None
        principal = principal_of(request.scope)
        org, grant = principal.org, principal.grant
        with self.runtime.throttle.request(org, client_key(request)):
            rows, newest = await self.runtime.store.list_records(
                org, t=t, after=after, limit=limit + 1
            )
        page = rows[:limit]
        next_cursor = _encode_cursor(page[-1].t, page[-1].id) if len(rows) > limit else None
        return JSONResponse(
            {
                "records": [
                    {"t": r.t, "id": r.id, "fields": r.fields, "sid": r.sid}
                    for r in page
                    if grant.covers(f"{r.t}/{r.id}")
                ],
                "sid": newest,
                "next_cursor": next_cursor,
            }
        )

    async def presence(self, request: Request) -> Response:
        t = request.path_params["t"]
        record_id = request.path_params["id"]
        try:
            name = validate_doc_name(f"{t}/{record_id}")
        except InvalidDocName as exc:
            raise ApiError(400, "invalid_record", str(exc)) from None
        present = self.runtime.presence.list(principal_of(request.scope).org, name)
        return JSONResponse({"t": t, "id": record_id, "present": present})

    # -- mutations -------------------------------------------------------------------

    async def mutations(self, request: Request) -> Response:
        settings = self.runtime.settings
        body = await read_json(request, settings.max_message_bytes)
        mutations, client_id = parse_mutations(
            body,
            settings.max_mutations,
            max_fields=settings.max_mutation_fields,
            max_bytes=settings.max_mutation_bytes,
        )
        principal = principal_of(request.scope)
        allowed = [m for m in mutations if principal.grant.allows(f"{m.t}/{m.id}", "write")]
        tx = new_tx_id()
        applied = iter(
            await self.runtime.feed.mutations.mutate_many(
                principal.org, allowed, actor=principal.actor, client_id=client_id, tx=tx
            )
            if allowed
            else []
        )
        outcomes: list[dict[str, Any] | Exception] = []
        for m in mutations:
            if principal.grant.allows(f"{m.t}/{m.id}", "write"):
                outcomes.append(next(applied))
                continue
            audit.warning(
                "refused mutation %s %r/%r -> 403 forbidden (outside the grant) who=%r peer=%s",
                m.op,
                m.t,
                m.id,
                f"{principal.org}/{principal.actor}",
                request.client.host if request.client else "-",
            )
            outcomes.append(
                MutationError(403, "forbidden", f"the grant does not cover {m.t}/{m.id}")
            )
        results = []
        for index, (mutation, outcome) in enumerate(zip(mutations, outcomes, strict=True)):
            result = outcome if isinstance(outcome, dict) else _failure(mutation, outcome)
            self.runtime.metrics.mutations.labels(str(result["status"])).inc()
            if "error" in result:
                log.info(
                    "mutation %s %r/%r -> %d %s: %s",
                    mutation.op,
                    mutation.t,
                    mutation.id,
                    result["status"],
                    result["error"],
                    result["detail"],
                )
            results.append({"index": index, **result})
        return _batch_response(results, tx)


def _batch_response(results: list[dict[str, Any]], tx: str) -> Response:
    """200 with every result; 503 ``store_unavailable`` (results included) when the
    store refused the batch: a mutation failed for it and none was applied, so the
    request as a whole may be retried (a retry with the same ``client_tx_id`` is safe).
    """
    unstored = [r for r in results if r.get("error") == "store_unavailable"]
    applied = any(200 <= r["status"] < 300 for r in results)
    if not unstored or applied:
        return JSONResponse({"results": results, "tx": tx})
    body = {
        "error": "store_unavailable",
        "detail": f"{len(unstored)} of {len(results)} not stored: {unstored[0]['detail']}",
        "results": results,
        "tx": tx,
    }
    return JSONResponse(body, status_code=503)


def _failure(m: Mutation, exc: Exception) -> dict[str, Any]:
    """The result of a mutation that failed alone (the batch goes on)."""
    if isinstance(exc, MutationError):
        return _failed(m, exc.status, exc.error, exc.detail)
    if isinstance(exc, RoomLoadError):
        if (cause := store_failure(exc)) is not None:
            return _failed(m, 503, "store_unavailable", f"cannot read: {cause}")
        return _failed(m, 500, "doc_load_failed", "the record cannot be loaded")
    if isinstance(exc, StoreError):
        return _failed(m, 503, "store_unavailable", f"not stored: {exc}")
    if isinstance(exc, ShuttingDown):
        return _failed(m, 503, "shutting_down", "the server is shutting down")
    if isinstance(exc, TooManyRooms):
        return _failed(m, 503, "too_many_rooms", str(exc))
    raise exc


def _failed(m: Mutation, status: int, error: str, detail: str) -> dict[str, Any]:
    return {
        "t": m.t,
        "id": m.id,
        "op": m.op,
        "status": status,
        "error": error,
        "detail": detail,
        "client_tx_id": m.client_tx_id,
    }


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON under the input contract (:func:`inputs.parse_json`):
    at most ``limit`` bytes (413), UTF-8, bounded depth, valid Unicode (400 if not)."""
    body = await read_body(request, limit)
    try:
        return parse_json(body, max_bytes=limit)
    except InputError as exc:
        if exc.status == 413:
            raise ApiError.of(exc) from None
        raise ApiError(400, "invalid_json", exc.detail) from None


def _bad(field: str, detail: str) -> ApiError:
    return ApiError(400, "invalid_mutation", f"{field}: {detail}", field=field)


def _key(name: str) -> str:
    """A member name as a field path component (quoted unless it is a plain word)."""
    return name if name.isidentifier() else json.dumps(name)


def _optional_sid(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad(field, "must be a non-negative integer sid")
    return value


def _name_error(value: str, what: str, max_chars: int) -> str | None:
    try:
        check_name(value, what, max_chars=max_chars)
    except InputError as exc:
        return exc.detail
    return None


def _too_big(index: int, status: int, error: str, field: str, detail: str) -> ApiError:
    return ApiError(status, error, f"{field}: {detail}", field=field, index=index)


def _check_size(item: dict, index: int, max_fields: int, max_bytes: int) -> None:
    """The per-mutation bounds: fields in ``p`` (422) and encoded bytes (413)."""
    p = item.get("p")
    if isinstance(p, dict) and len(p) > max_fields:
        raise _too_big(
            index,
            422,
            "too_many_fields",
            f"mutations[{index}].p",
            f"{len(p)} fields, at most {max_fields} per mutation (--max-mutation-fields)",
        )
    encoded = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
    size = len(encoded.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise _too_big(
            index,
            413,
            "mutation_too_large",
            f"mutations[{index}]",
            f"{size} bytes of JSON, at most {max_bytes} per mutation (--max-mutation-bytes)",
        )


def parse_mutations(
    body: Any,
    max_mutations: int,
    *,
    max_fields: int = MAX_MUTATION_FIELDS,
    max_bytes: int = MAX_MUTATION_BYTES,
) -> tuple[list[Mutation], str | None]:
    """Check the whole request before anything is applied.

    ``body`` comes from :func:`read_json`, so it is bounded in depth and its strings
    are valid Unicode; names here follow the name rule of :mod:`crdt_sync.inputs`.

    Returns:
        The mutations and the request's ``client_id`` (tells writers of one actor apart).

    Raises:
        ApiError: 400 naming the first bad field; 422 ``too_many_fields`` or 413
            ``mutation_too_large`` naming the mutation (``field`` and ``index``).
    """
    if not isinstance(body, dict):
        raise _bad("body", 'must be an object {"mutations": [...]}')
    unknown = body.keys() - {"mutations", "base_sid", "client_id"}
    if unknown:
        raise _bad(_key(sorted(unknown)[0]), "unknown field")
    items = body.get("mutations")
    if not isinstance(items, list):
        raise _bad("mutations", "must be a list")
    if not 1 <= len(items) <= max_mutations:
        raise _bad("mutations", f"must hold 1 to {max_mutations} mutations")
    base_sid = _optional_sid(body.get("base_sid"), "base_sid")
    client_id = body.get("client_id")
    if client_id is not None:
        if not isinstance(client_id, str):
            raise _bad("client_id", f"must be a string of 1 to {MAX_CLIENT_ID_CHARS} characters")
        why = _name_error(client_id, "client_id", MAX_CLIENT_ID_CHARS)
        if why is not None:
            raise _bad("client_id", why)
    parsed = []
    for i, item in enumerate(items):
        where = f"mutations[{i}]"
        if not isinstance(item, dict):
            raise _bad(where, "must be an object")
        unknown = item.keys() - {"t", "id", "op", "p", "client_tx_id", "base_sid"}
        if unknown:
            raise _bad(f"{where}.{_key(sorted(unknown)[0])}", "unknown field")
        t, record_id, op = item.get("t"), item.get("id"), item.get("op")
        if not isinstance(t, str) or not t or "/" in t:
            raise _bad(f"{where}.t", "must be a non-empty string without '/'")
        why = record_type_error(t)
        if why is not None:
            raise _bad(f"{where}.t", why)
        if not isinstance(record_id, str) or not record_id:
            raise _bad(f"{where}.id", "must be a non-empty string")
        try:
            validate_doc_name(f"{t}/{record_id}")
        except InvalidDocName as exc:
            raise _bad(f"{where}.id", str(exc)) from None
        if op not in OPS:
            raise _bad(f"{where}.op", "must be one of i, u, d")
        p = item.get("p", {} if op == "d" else None)
        if not isinstance(p, dict):
            raise _bad(f"{where}.p", "must be an object of fields")
        if op == "d" and p:
            raise _bad(f"{where}.p", "must be empty for a delete")
        for key in p:
            why = _name_error(key, "field name", MAX_FIELD_NAME_CHARS)
            if why is not None:
                raise _bad(f"{where}.p.{_key(key)}", why)
        tx = item.get("client_tx_id")
        if tx is not None:
            if not isinstance(tx, str):
                raise _bad(f"{where}.client_tx_id", f"must be a string of 1 to {MAX_TX_ID_CHARS}")
            why = _name_error(tx, "client_tx_id", MAX_TX_ID_CHARS)
            if why is not None:
                raise _bad(f"{where}.client_tx_id", why)
        _check_size(item, i, max_fields, max_bytes)
        own_base = _optional_sid(item.get("base_sid"), f"{where}.base_sid")
        parsed.append(
            Mutation(
                t=t,
                id=record_id,
                op=op,
                p=p,
                client_tx_id=tx,
                base_sid=own_base if own_base is not None else base_sid,
            )
        )
    return parsed, client_id
