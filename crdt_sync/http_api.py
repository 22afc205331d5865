"""What every JSON HTTP handler shares: errors as ``{error, detail}``, parameter and
body parsing, and one wrapper that turns exceptions into responses with one log line.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.convertors import PathConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from persistence.store import StoreError
from rooms.manager import ShuttingDown

from .errors import json_error
from .inputs import InputError, query_int
from .throttle import Throttled

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]


class NameConvertor(PathConvertor):
    """``{doc:name}``: the rest of the path, line breaks included.

    Starlette's ``path`` is ``.*``, which stops at a newline, and its route regex ends
    in ``$``, which matches before a trailing one: ``/docs/a%0A`` would read doc
    ``a`` and ``/docs/a%0Ab`` would be a 404. With this every name reaches the
    handler, whose name rule refuses it with a 400 that says why.
    """

    regex = "(?s:.*)"


register_url_convertor("name", NameConvertor())


class ApiError(Exception):
    """Raised inside a handler; becomes a JSON error response."""

    def __init__(self, status: int, error: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.extra: dict[str, Any] = extra  # more members of the JSON body

    def response(self) -> Response:
        if self.extra:
            body = {"error": self.error, "detail": self.detail, **self.extra}
            return JSONResponse(body, status_code=self.status)
        return json_error(self.status, self.error, self.detail)

    @classmethod
    def of(cls, exc: InputError, **extra: Any) -> ApiError:
        """An input refused by :mod:`crdt_sync.inputs` as a response."""
        return cls(exc.status, exc.error, exc.detail, **extra)


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter (ASCII digits only), 400 outside ``low..high``."""
    try:
        return query_int(request.query_params.get(name), name, default, low, high)
    except InputError as exc:
        raise ApiError.of(exc) from None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"body of {declared} bytes exceeds {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "too_large", f"body exceeds {limit} bytes")
    return bytes(body)


def endpoint(runtime: Any, handler: Handler) -> Handler:
    """``handler`` as a route endpoint: 503 while shutting down, :class:`ApiError` as its
    JSON, :class:`Throttled` as 429 with ``Retry-After``, a store failure as 503."""

    async def handle(request: Request) -> Response:
        if runtime.shutting_down:
            return json_error(503, "shutting_down", "the server is shutting down")
        try:
            return await handler(request)
        except (ApiError, InputError) as exc:
            error = exc if isinstance(exc, ApiError) else ApiError.of(exc)
            log.info(
                "%s %r -> %d %s: %s",
                request.method,
                request.url.path,
                error.status,
                error.error,
                error.detail,
            )
            return error.response()
        except Throttled as exc:
            log.debug("%s %r -> 429: %s", request.method, request.url.path, exc.detail)
            body = {
                "error": "too_many_requests",
                "detail": exc.detail,
                "retry_after_ms": round(exc.retry_after * 1000),
            }
            headers = {"Retry-After": exc.retry_after_header}
            return JSONResponse(body, status_code=429, headers=headers)
        except StoreError as exc:
            log.error("%s %r -> 503: %s", request.method, request.url.path, exc)
            return json_error(503, "store_unavailable", f"the store failed: {exc}")
        except ShuttingDown:  # the shutdown began while this request waited for a room
            return json_error(503, "shutting_down", "the server is shutting down")

    return handle


def routes(runtime: Any, table: list[tuple[str, str, Handler]]) -> list[Route]:
    """Routes for ``(method, path, handler)`` rows, each wrapped by :func:`endpoint`."""
    return [
        Route(path, endpoint(runtime, handler), methods=[method]) for method, path, handler in table
    ]
