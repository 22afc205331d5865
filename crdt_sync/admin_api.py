"""Admin routes (the front door admits only ``admin`` tokens to ``/admin/*``).

``POST /admin/revoke`` with ``{"sub": ...}``, ``{"doc": ...}`` and/or ``{"org": ...}``
closes every matching live connection (Yjs and frame feed) of this node with 4401
at once and answers ``{"revoked": N}``. ``org`` defaults to the admin's own org;
naming another org is 403 ``forbidden``: an admin administers its own tenant only
(an operator who must act across tenants restarts or rotates the secret). Revocation
ends sessions; it does not blacklist tokens: a client whose token is still valid may
reconnect, so revoke after the host app stopped issuing (or the webhook stopped
accepting) that user's tokens.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .auth.principal import principal_of
from .http_api import ApiError, routes
from .inputs import InputError, check_name
from .sync_api import read_json

log = logging.getLogger(__name__)
audit = logging.getLogger("crdt_sync.audit")

MAX_BODY_BYTES = 16 * 1024
REVOKE_KEYS = ("sub", "doc", "org")


class AdminApi:
    """Handlers of ``/admin/*``."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    def routes(self) -> list[Route]:
        return routes(self.runtime, [("POST", "/admin/revoke", self.revoke)])

    async def revoke(self, request: Request) -> Response:
        principal = principal_of(request.scope)
        body = await read_json(request, MAX_BODY_BYTES)
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_request", 'body must be an object {"sub"|"doc"|"org"}')
        unknown = sorted(body.keys() - set(REVOKE_KEYS))
        if unknown:
            raise ApiError(400, "invalid_request", f"{unknown[0]}: unknown field")
        if not any(key in body for key in REVOKE_KEYS):
            raise ApiError(400, "invalid_request", "give at least one of sub, doc, org")
        values: dict[str, str] = {}
        for key in REVOKE_KEYS:
            if key not in body:
                continue
            value = body[key]
            if not isinstance(value, str):
                raise ApiError(400, "invalid_request", f"{key}: must be a non-empty string")
            try:
                values[key] = check_name(value, key, max_chars=1024)
            except InputError as exc:
                raise ApiError(400, "invalid_request", exc.detail) from None
        org = values.get("org", principal.org)
        if org != principal.org:
            audit.warning(
                "refused POST '/admin/revoke' org=%r -> 403 forbidden (another org) who=%r peer=%s",
                org,
                f"{principal.org}/{principal.actor}",
                request.client.host if request.client else "-",
            )
            raise ApiError(403, "forbidden", "an admin may revoke only in its own org")
        count = self.runtime.sessions.revoke(org=org, sub=values.get("sub"), doc=values.get("doc"))
        audit.warning(
            "revoke org=%r sub=%r doc=%r by %r: %d sessions closed",
            org,
            values.get("sub"),
            values.get("doc"),
            principal.actor,
            count,
        )
        return JSONResponse({"revoked": count})
