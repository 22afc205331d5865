"""The client subcommands of ``crdt-sync``: ``get``, ``put`` (text docs) and ``tail``.

::

    crdt-sync put note/x README.md          # the doc's Y.Text 'body' becomes the file
    crdt-sync get note/x > copy.md          # ... and back, byte for byte
    crdt-sync tail --since 0 --type note    # frames, live

``--url`` (``CRDT_SYNC_URL``, default ``http://127.0.0.1:1234``) is the server base;
``--token`` (``CRDT_SYNC_TOKEN``) is sent as ``Authorization: Bearer``.

``get`` reads ``GET /docs/{doc}`` and writes the field's text as it is (no newline
added). ``put`` reads the doc's state (``GET /docs/{doc}/update``), replaces the
``Y.Text`` in one Yjs transaction on a local copy (only the span between the common
prefix and suffix, so a live editor's cursor elsewhere stays put) and posts that
change (``POST /docs/{doc}/update``): durable when it returns, seen live by the doc's
editors, merged with whatever they typed meanwhile.

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
from pycrdt import Doc, Text

from .urls import http_base

DEFAULT_URL = "http://127.0.0.1:1234"
URL_ENV = "CRDT_SYNC_URL"
TOKEN_ENV = "CRDT_SYNC_TOKEN"

EXIT_ERROR = 1
EXIT_UNREACHABLE = 3
EXIT_UNAUTHORIZED = 4
EXIT_FORBIDDEN = 5
EXIT_NOT_FOUND = 6


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
        "Yjs transaction that live editors see; returns once the server stored it.",
    )
    put.add_argument("doc", metavar="DOC", help="document name, e.g. note/x")
    put.add_argument("file", metavar="FILE", help="UTF-8 text file, or - for stdin")
    _add_common(put)
    put.add_argument("--field", default="body", help="the Y.Text root (default: %(default)s)")
    put.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds each request to the server may take (default: 10)",
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
    path = _path(args.doc)
    # pycrdt would hand out a Text view of a Y.Map root too: refuse a field that holds
    # something else (the server's projection says what it is).
    try:
        current = _http(base, args.token, "GET", f"/docs/{path}", timeout=args.timeout)
    except CommandError as exc:
        if exc.exit_code != EXIT_NOT_FOUND:
            raise
        state = b""  # a new doc
    else:
        value = current.json().get("content", {}).get(args.field)
        if value is not None and not isinstance(value, str):
            raise CommandError(f"field {args.field!r} of {args.doc!r} is not text")
        state = _http(base, args.token, "GET", f"/docs/{path}/update", timeout=args.timeout).content
    doc = Doc()
    if state:
        doc.apply_update(state)
    before = doc.get_state()
    replace_text(doc, doc.get(args.field, type=Text), text)
    # Durable before the 2xx, and seen live by the doc's editors (merged with whatever
    # they typed since the read: only the changed span is replaced).
    _http(
        base,
        args.token,
        "POST",
        f"/docs/{path}/update",
        content=doc.get_update(before),
        headers={"Content-Type": "application/octet-stream"},
        timeout=args.timeout,
    )
    return 0


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
    from .frames import FrameClientError
    from .tail import tail

    try:
        anyio.run(
            lambda: tail(
                args.url, since=args.since, type=args.type, token=args.token, out=sys.stdout
            )
        )
    except (OSError, httpx.TransportError) as exc:
        raise CommandError(f"cannot reach {args.url}: {exc}", EXIT_UNREACHABLE) from None
    except FrameClientError as exc:
        raise CommandError(str(exc)) from None
    return 0


# -- HTTP ------------------------------------------------------------------------------


def _http_base(url: str) -> str:
    try:
        return http_base(url)
    except ValueError as exc:
        raise CommandError(str(exc), 2) from None


def _path(doc: str) -> str:
    return quote(doc, safe="/")


def _http(
    base: str,
    token: str | None,
    method: str,
    path: str,
    *,
    timeout: float = 10.0,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    headers = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=timeout) as http:
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
