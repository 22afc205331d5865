"""The server URLs the client SDKs take: one base, ``http(s)://`` or ``ws(s)://``, with
a proxy's path prefix if any, ``/yjs`` at its end or not."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit


def yjs_base(url: str) -> str:
    """The ``ws(s)://…/yjs`` base for a server URL (``http``/``ws``, ``/yjs`` or not).

    Raises:
        ValueError: not an http(s) or ws(s) URL, or it carries a query (pass the token
            as ``token=``, never in the URL).
    """
    parts = _split(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    if not path.endswith("/yjs"):
        path += "/yjs"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def http_base(url: str) -> str:
    """The ``http(s)://`` base of the HTTP API for the same URLs :func:`yjs_base` takes."""
    parts = _split(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    if path.endswith("/yjs"):
        path = path[: -len("/yjs")]
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def _split(url: str) -> Any:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
        raise ValueError(f"expected an http(s):// or ws(s):// server URL, got {url!r}")
    if parts.query or parts.fragment:
        raise ValueError("the server URL must not carry a query or fragment (pass token=)")
    return parts
