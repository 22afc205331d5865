"""JSON errors: every 4xx/5xx body is ``{"error": code, "detail": text}``."""

from __future__ import annotations

import json

from starlette.responses import JSONResponse

from persistence.store import StoreError


def json_error_body(error: str, detail: str) -> bytes:
    return json.dumps({"error": error, "detail": detail}).encode("utf-8")


def json_error(status: int, error: str, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def store_failure(exc: BaseException) -> StoreError | None:
    """The store error behind ``exc`` (itself, or the error a room's load failed with),
    or ``None``: a doc that could not be *read* because the store is unreachable is a
    503 / 4503 (try again), not a doc that cannot be loaded (500 / 4500)."""
    seen = 0
    while exc is not None and seen < 8:  # a bounded walk down the cause chain
        if isinstance(exc, StoreError):
            return exc
        exc = exc.__cause__  # type: ignore[assignment]
        seen += 1
    return None
