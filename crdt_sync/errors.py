"""JSON errors: every 4xx/5xx body is ``{"error": code, "detail": text}``."""

from __future__ import annotations

import json

from starlette.responses import JSONResponse


def json_error_body(error: str, detail: str) -> bytes:
    return json.dumps({"error": error, "detail": detail}).encode("utf-8")


def json_error(status: int, error: str, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)
