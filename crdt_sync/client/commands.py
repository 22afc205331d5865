"""The client subcommands of ``crdt-sync``: ``get``, ``put`` (text docs) and ``tail``.

::

    crdt-sync put note/x README.md          # the doc's Y.Text 'body' becomes the file
    crdt-sync get note/x > copy.md          # ... and back, byte for byte
    crdt-sync tail --since 0 --type note    # frames, live

``--url`` (``CRDT_SYNC_URL``, default ``http://127.0.0.1:1234``) is the server base;
``--token`` (``CRDT_SYNC_TOKEN``) is sent as ``Authorization: Bearer``.

``get`` reads ``GET /docs/{doc}`` and writes the field's text as it is (no newline
added). ``put`` checks the token may write (``POST /docs/{doc}/update`` of an empty
update: 401/403 before anything is changed), then edits the ``Y.Text`` in one Yjs
transaction through a :class:`~crdt_sync.client.docs.DocClient` (editors see it
live; only the span between the common prefix and suffix is replaced), waits for a
sync round trip (the server has applied it and queued it for its group commit) and
checks with ``GET /docs/{doc}/update`` that the server's state includes it.

Exit codes: 0 done, 1 other error (a field that is not text, a file that is not
UTF-8...), 2 usage, 3 server unreachable, 4 unauthorized (401), 5 forbidden
(403), 6 no such doc (404).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any
from urllib.parse import quote

import anyio
import httpx
from pycrdt import Text, get_state

from rooms.codec import decode_state_vector

from .docs import DocClient, DocClientError, DocNotFound, Forbidden, Unauthorized, http_base

DEFAULT_URL = "http://127.0.0.1:1234"
URL_ENV = "CRDT_SYNC_URL"
TOKEN_ENV = "CRDT_SYNC_TOKEN"

EXIT_ERROR = 1
EXIT_UNREACHABLE = 3
EXIT_UNAUTHORIZED = 4
EXIT_FORBIDDEN = 5
EXIT_NOT_FOUND = 6

#: The empty Yjs update: ``put``'s write-permission probe (the server applies nothing).
EMPTY_UPDATE = b"\x00\x00"


class CommandError(Exception):
    """A failure to report as ``crdt-sync CMD: error: MESSAGE`` with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_client_commands(subparsers: Any) -> None:
    """Add ``get``, ``put`` and ``tail`` to the ``crdt-sync`` subcommands (``args.run``)."""
    get = subparsers.add_parser(
        "get",
        help="print a text doc's text",
        description="Print the text of a doc's Y.Text field (as stored, no newline added).",
    )
    get.add_argument("doc", metavar="DOC", help="document name, e.g. note/x")
    _add_common(get)
    get.add_argument("--field", default="body", help="the Y.Text root (default: %(default)s)")
    get.set_defaults(run=_runner("get", run_get))

    put = subparsers.add_parser(
        "put",
        help="replace a text doc's text with a file",
        description="Replace the text of a doc's Y.Text field with FILE ('-': stdin), in one "
        "Yjs transaction that live editors see; returns once the server has it.",
    )
    put.add_argument("doc", metavar="DOC", help="document name, e.g. note/x")
    put.add_argument("file", metavar="FILE", help="UTF-8 text file, or - for stdin")
    _add_common(put)
    put.add_argument("--field", default="body", help="the Y.Text root (default: %(default)s)")
    put.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to reach the server and have the change acknowledged (default: 10)",
    )
    put.set_defaults(run=_runner("put", run_put))

    tail = subparsers.add_parser(
        "tail",
        help="print SyncFrames live",
        description="Print the frame feed (one JSON frame per line) until interrupted.",
    )
    tail.add_argument("--since", type=int, default=None, help="start after this sid")
    tail.add_argument("--type", default=None, help="only records of this type (t)")
    _add_common(tail)
    tail.set_defaults(run=_runner("tail", run_tail))


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get(URL_ENV) or DEFAULT_URL,
        help=f"server base URL (env {URL_ENV}; default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV) or None,
        help=f"access token (env {TOKEN_ENV})",
    )


def _runner(name: str, fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except CommandError as exc:
            print(f"crdt-sync {name}: error: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            return 130

    return run


# -- get -------------------------------------------------------------------------------


def run_get(args: argparse.Namespace) -> int:
    base = _http_base(args.url)
    response = _http(base, args.token, "GET", "/docs/" + _path(args.doc))
    content = response.json().get("content", {})
    if args.field not in content:
        fields = ", ".join(sorted(content)) or "none"
        raise CommandError(f"doc {args.doc!r} has no field {args.field!r} (fields: {fields})")
    value = content[args.field]
    if not isinstance(value, str):
        raise CommandError(f"field {args.field!r} of {args.doc!r} is not text")
    sys.stdout.write(value)
    sys.stdout.flush()
    return 0


# -- put -------------------------------------------------------------------------------


def run_put(args: argparse.Namespace) -> int:
    base = _http_base(args.url)
    text = _read_text(args.file)
    # 401/403/400 now, before anything is changed (a read-only token would otherwise
    # be admitted to the room and its edit silently dropped).
    _http(base, args.token, "POST", f"/docs/{_path(args.doc)}/update", content=EMPTY_UPDATE)
    # pycrdt would hand out a Text view of a Y.Map root too: refuse a field that holds
    # something else (the server's projection says what it is).
    try:
        current = _http(base, args.token, "GET", "/docs/" + _path(args.doc))
    except CommandError as exc:
        if exc.exit_code != EXIT_NOT_FOUND:
            raise
    else:
        value = current.json().get("content", {}).get(args.field)
        if value is not None and not isinstance(value, str):
            raise CommandError(f"field {args.field!r} of {args.doc!r} is not text")
    state_vector = anyio.run(_put, base, args.doc, args.field, text, args.token, args.timeout)
    update = _http(base, args.token, "GET", f"/docs/{_path(args.doc)}/update").content
    held = decode_state_vector(get_state(update))
    missing = {c: clock for c, clock in state_vector.items() if held.get(c, 0) < clock}
    if missing:
        raise CommandError(f"the server does not hold the change to {args.doc!r}")
    return 0


async def _put(
    base: str, name: str, field: str, text: str, token: str | None, limit: float
) -> dict[int, int]:
    """Replace the text through a DocClient; returns our state vector once acknowledged."""
    async with DocClient(base, name, token=token, open_timeout=limit) as client:
        try:
            with anyio.fail_after(limit):
                await client.synced()
                try:
                    body = client.doc.get(field, type=Text)
                except Exception as exc:
                    raise CommandError(f"field {field!r} of {name!r} is not text: {exc}") from None
                replace_text(client.doc, body, text)
                await client.flush()
        except TimeoutError:
            problem = client.last_problem or "no answer"
            raise CommandError(
                f"cannot reach {base} within {limit:g} s: {problem}", EXIT_UNREACHABLE
            ) from None
        except DocClientError as exc:
            raise CommandError(str(exc), _exit_code(exc)) from None
        return decode_state_vector(client.doc.get_state())


def replace_text(doc: Any, body: Text, new: str) -> None:
    """Make ``body`` read ``new`` in one transaction, replacing only the span between
    the common prefix and suffix (so a live editor's cursor elsewhere stays put)."""
    old = str(body)
    if old == new:
        return
    start = 0
    limit = min(len(old), len(new))
    while start < limit and old[start] == new[start]:
        start += 1
    end = 0
    while end < limit - start and old[len(old) - 1 - end] == new[len(new) - 1 - end]:
        end += 1
    # pycrdt indexes text by UTF-8 byte offset.
    at = len(old[:start].encode("utf-8"))
    removed = len(old[start : len(old) - end].encode("utf-8"))
    inserted = new[start : len(new) - end]
    with doc.transaction():
        if removed:
            del body[at : at + removed]
        if inserted:
            body.insert(at, inserted)


def _read_text(path: str) -> str:
    try:
        raw = sys.stdin.buffer.read() if path == "-" else open(path, "rb").read()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(f"{path} is not UTF-8 text: {exc}") from None


# -- tail ------------------------------------------------------------------------------


def run_tail(args: argparse.Namespace) -> int:
    from .tail import tail  # written with the frame client; imported only when used

    try:
        anyio.run(
            lambda: tail(
                args.url, since=args.since, type=args.type, token=args.token, out=sys.stdout
            )
        )
    except (OSError, httpx.TransportError) as exc:
        raise CommandError(f"cannot reach {args.url}: {exc}", EXIT_UNREACHABLE) from None
    return 0


# -- HTTP ------------------------------------------------------------------------------


def _http_base(url: str) -> str:
    try:
        return http_base(url)
    except ValueError as exc:
        raise CommandError(str(exc), 2) from None


def _path(doc: str) -> str:
    return quote(doc, safe="/")


def _http(base: str, token: str | None, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=10.0) as http:
            response = http.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        raise CommandError(f"cannot reach {base}: {exc}", EXIT_UNREACHABLE) from None
    if response.is_success:
        return response
    try:
        detail = response.json().get("detail") or response.text
    except ValueError:
        detail = response.text
    message = f"{method} {path}: {response.status_code} {detail}".rstrip()
    code = {401: EXIT_UNAUTHORIZED, 403: EXIT_FORBIDDEN, 404: EXIT_NOT_FOUND}
    raise CommandError(message, code.get(response.status_code, EXIT_ERROR))


def _exit_code(error: DocClientError) -> int:
    if isinstance(error, Unauthorized):
        return EXIT_UNAUTHORIZED
    if isinstance(error, Forbidden):
        return EXIT_FORBIDDEN
    if isinstance(error, DocNotFound):
        return EXIT_NOT_FOUND
    return EXIT_ERROR
