"""Admin routes (the front door admits only ``admin`` tokens to ``/admin/*``).

``POST /admin/revoke`` with ``{"sub": ...}``, ``{"doc": ...}`` and/or ``{"org": ...}``
closes every matching live connection (Yjs and frame feed) of this node with 4401
at once and answers ``{"revoked": N}``. ``org`` defaults to the admin's own org;
naming another org is 403 ``forbidden``: an admin administers its own tenant only
(an operator who must act across tenants restarts or rotates the secret). Revocation
ends sessions; it does not blacklist tokens: a client whose token is still valid may
reconnect, so revoke after the host app stopped issuing (or the webhook stopped
accepting) that user's tokens.

Outgoing webhooks (:mod:`crdt_sync.webhooks`), of the admin's own org:
``GET /admin/webhooks`` lists the endpoints with their cursor and backlog per org and
the pending and parked deliveries; ``POST /admin/webhooks/parked/{id}/replay`` and
``POST /admin/webhooks/parked/replay`` (all) queue parked batches again, with the
same ``webhook-id``.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from persistence import values
from persistence.outbox import DeliveryInfo

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
        return routes(
            self.runtime,
            [
                ("POST", "/admin/revoke", self.revoke),
                ("GET", "/admin/webhooks", self.webhooks),
                ("POST", "/admin/webhooks/parked/replay", self.replay_all),
                ("POST", "/admin/webhooks/parked/{id}/replay", self.replay_one),
            ],
        )

    async def webhooks(self, request: Request) -> Response:
        """Endpoints (cursor and backlog per org), pending and parked deliveries."""
        org = principal_of(request.scope).org
        sender = self.runtime.webhooks
        endpoints = sender.endpoints if sender is not None else []
        status = await self.runtime.store.webhook_status([e.id for e in endpoints])
        now = values.now_ms()
        listed = []
        for e in endpoints:
            orgs = [
                {"org": o, "cursor": cursor, "backlog": backlog}
                for (endpoint, o), (cursor, backlog) in sorted(status.cursors.items())
                if endpoint == e.id and o == org
            ]
            listed.append({"id": e.id, "url": e.label, "types": sorted(e.types), "orgs": orgs})
        rows = [d for d in status.deliveries if d.org == org]
        return JSONResponse(
            {
                "endpoints": listed,
                "pending": [_delivery(d, now) for d in rows if d.status == "pending"],
                "parked": [_delivery(d, now) for d in rows if d.status == "parked"],
            }
        )

    async def replay_all(self, request: Request) -> Response:
        org = principal_of(request.scope).org
        count = await self.runtime.store.replay_deliveries(None, org=org)
        audit.warning("webhook replay org=%r all parked: %d", org, count)
        return JSONResponse({"replayed": count})

    async def replay_one(self, request: Request) -> Response:
        org = principal_of(request.scope).org
        raw = request.path_params["id"]
        if not raw.isdigit() or len(raw) > 18:
            raise ApiError(400, "invalid_request", "id: must be a delivery id (digits)")
        count = await self.runtime.store.replay_deliveries(int(raw), org=org)
        if count == 0:
            raise ApiError(404, "not_found", f"no parked webhook delivery {raw}")
        audit.warning("webhook replay org=%r delivery %s", org, raw)
        return JSONResponse({"replayed": count})

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


def _delivery(d: DeliveryInfo, now: int) -> dict[str, Any]:
    return {
        "id": d.id,
        "webhook_id": d.webhook_id,
        "endpoint": d.endpoint,
        "org": d.org,
        "first_sid": d.first_sid,
        "last_sid": d.last_sid,
        "frames": d.frames,
        "attempts": d.attempts,
        "first_attempt_at": d.first_attempt_at,
        "next_attempt_at": d.next_attempt_at,
        "in_flight": d.status == "pending" and d.lease_expires > now,
        "last_error": d.last_error,
        "last_status": d.last_status,
    }
