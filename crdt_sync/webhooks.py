"""Outgoing webhooks: batches of committed frames POSTed to the host app.

``--webhook URL`` (or ``TYPES=URL``, types joined by ``+``) names an endpoint; its id
is a short hash of URL and type filter, so a restart with the same flags continues
where the endpoint's cursor stands. The store keeps the outbox, cursors and leased
deliveries (:mod:`persistence.outbox`); this module only claims, sends and reports:

* every ~250 ms (sooner when this node commits frames) each endpoint's next batch is
  claimed (:meth:`Store.claim_delivery`), up to :data:`MAX_IN_FLIGHT` at a time;
* a batch is POSTed signed per the Standard Webhooks spec
  (https://www.standardwebhooks.com/: ``webhook-id``, ``webhook-timestamp``,
  ``webhook-signature`` = ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, one
  entry per secret); ``webhook-id`` is ``{endpoint}:{org}:{first_sid}-{last_sid}``,
  the same on every attempt;
* 2xx: delivered. Anything else (a status, a timeout, a refused connection): retried
  after a jittered exponential backoff until ``--webhook-retry-hours`` after the first
  attempt, then parked (kept, visible and replayable at ``/admin/webhooks``).

Delivery is at least once: a node killed after the receiver accepted but before the
store heard of it sends the batch again (same ``webhook-id``) once its lease expires.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

from persistence import values
from persistence.outbox import Delivery, EndpointSpec
from persistence.store import Frame, Store, StoreError

from . import __version__
from .records.wire import dumps, frame_dict

log = logging.getLogger(__name__)

#: Seconds between two looks for work when nothing wakes the sender.
POLL_SECONDS = 0.25
#: Batches one node sends at once (over every endpoint).
MAX_IN_FLIGHT = 16
#: Seconds a claim's lease outlives the request timeout: a node that dies mid-request
#: leaves the batch to others this long after it would have given up itself.
LEASE_MARGIN_SECONDS = 5.0
USER_AGENT = f"crdt-sync/{__version__} (webhooks)"

_TYPE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class WebhookConfigError(ValueError):
    """A ``--webhook`` or ``--webhook-secret`` value that cannot be used."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One ``--webhook``: where to POST and which record types to send (empty: all)."""

    url: str
    types: frozenset[str]

    @property
    def id(self) -> str:
        """A short stable hash of URL and type filter (names its cursor and webhook-ids)."""
        key = self.url + "\n" + "+".join(sorted(self.types))
        return "wh_" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]

    @property
    def label(self) -> str:
        """The URL without query or credentials (for logs and the admin API)."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return f"{parts.scheme}://{host}{parts.path}"

    @property
    def spec(self) -> EndpointSpec:
        return EndpointSpec(self.id, self.types)


def parse_endpoint(raw: str) -> Endpoint:
    """``URL`` or ``TYPES=URL`` (types joined by ``+``).

    Raises:
        WebhookConfigError: not an http(s) URL with a host, or a bad type name.
    """
    text = raw.strip()
    types: frozenset[str] = frozenset()
    if not text.lower().startswith(("http://", "https://")) and "=" in text:
        names, _, text = text.partition("=")
        parts = names.split("+")
        bad = [t for t in parts if not _TYPE.match(t)]
        if bad:
            raise WebhookConfigError(
                f"--webhook {raw!r}: bad record type {bad[0]!r} (types are joined by +, "
                "each 1-128 letters, digits and _ . : -)"
            )
        types = frozenset(parts)
    try:
        parts_url = urlsplit(text)
        host = parts_url.hostname
        parts_url.port  # noqa: B018 - raises on a bad port
    except ValueError:
        host = None
        parts_url = None  # type: ignore[assignment]
    if parts_url is None or parts_url.scheme not in ("http", "https") or not host:
        raise WebhookConfigError(
            f"--webhook {raw!r}: expected an http:// or https:// URL with a host, "
            "optionally after TYPES= (e.g. card+column=https://app.example/hook)"
        )
    return Endpoint(text, types)


def endpoints_of(raws: Sequence[str]) -> list[Endpoint]:
    """Every ``--webhook``; the same endpoint twice is an error (it would count once)."""
    found: dict[str, Endpoint] = {}
    for raw in raws:
        endpoint = parse_endpoint(raw)
        if endpoint.id in found:
            raise WebhookConfigError(f"--webhook {raw!r} is given twice")
        found[endpoint.id] = endpoint
    return list(found.values())


def keys_of(secrets: Sequence[str]) -> list[bytes]:
    """The HMAC keys of ``whsec_<base64>`` secrets.

    Raises:
        WebhookConfigError: a secret without the prefix or whose key is not base64
            (the message never shows the secret).
    """
    keys = []
    for i, secret in enumerate(secrets, 1):
        if not secret.startswith("whsec_"):
            raise WebhookConfigError(
                f"--webhook-secret #{i} must look like whsec_<base64> (Standard Webhooks)"
            )
        try:
            key = base64.b64decode(secret[len("whsec_") :], validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) < 16:
            raise WebhookConfigError(
                f"--webhook-secret #{i}: the part after whsec_ must be base64 of at least 16 bytes"
            )
        keys.append(key)
    return keys


def sign(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,<base64>`` per key, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys
    )


def body_of(delivery: Delivery) -> bytes:
    """The POST body: ``{type, org, first_sid, last_sid, frames}`` (frames as the feed
    sends them)."""
    frames: list[Frame] = delivery.frames
    return dumps(
        {
            "type": "frames",
            "org": delivery.org,
            "first_sid": delivery.first_sid,
            "last_sid": delivery.last_sid,
            "frames": [frame_dict(f) for f in frames],
        }
    ).encode("utf-8")


class WebhookSender:
    """Claims, sends and reports the batches of every endpoint (one per node).

    Args:
        settings: The node's settings (``webhook*``).
        store: The store, opened with ``outbox=True``.
        node_id: This node's id (the lease owner, with a per-process suffix).
    """

    def __init__(self, settings: Any, store: Store, node_id: str) -> None:
        self.endpoints = endpoints_of(settings.webhook)
        self._keys = keys_of(settings.webhook_secret)
        self._store = store
        self._owner = f"{node_id}:{uuid.uuid4().hex[:8]}"
        self._timeout = float(settings.webhook_timeout)
        self._lease_ms = round((self._timeout + LEASE_MARGIN_SECONDS) * 1000)
        self._retry_ms = round(settings.webhook_retry_hours * 3_600_000)
        self._backoff = float(settings.webhook_backoff_seconds)
        self._backoff_max = float(settings.webhook_backoff_max_seconds)
        self._throttle_ms = int(settings.webhook_throttle_ms)
        self._max_batch = int(settings.webhook_max_batch)
        self._ids = [e.id for e in self.endpoints]
        self._wake = anyio.Event()
        #: Attempts by outcome: ok, error (to be retried), parked.
        self.attempts: Counter[str] = Counter({"ok": 0, "error": 0, "parked": 0})
        self.in_flight = 0  # POSTs waiting for an answer
        self._claimed = 0  # claimed batches not yet reported

    def wake(self, frames: list[Frame]) -> None:
        """A frame bus subscriber: this node committed frames, look for work now."""
        self._wake.set()

    async def run(self) -> None:
        """Until cancelled (a supervised loop): claim and send."""
        async with (
            httpx.AsyncClient(timeout=self._timeout, follow_redirects=False) as client,
            anyio.create_task_group() as tg,
        ):
            while True:
                self._wake = anyio.Event()
                for endpoint in self.endpoints:
                    while self._claimed < MAX_IN_FLIGHT:
                        delivery = await self._store.claim_delivery(
                            endpoint.spec,
                            owner=self._owner,
                            lease_ms=self._lease_ms,
                            max_batch=self._max_batch,
                            throttle_ms=self._throttle_ms,
                        )
                        if delivery is None:
                            break
                        self._claimed += 1
                        tg.start_soon(self._send, client, endpoint, delivery)
                with anyio.move_on_after(POLL_SECONDS):
                    await self._wake.wait()
                    # A burst of commits lands in one claim.
                    await anyio.sleep(0.02)

    async def _send(
        self, client: httpx.AsyncClient, endpoint: Endpoint, delivery: Delivery
    ) -> None:
        try:
            await self._attempt(client, endpoint, delivery)
        except StoreError as exc:
            # The outcome is not recorded: the lease expires and the batch is sent again.
            log.error(
                "webhook %s org=%r sids %d-%d: cannot record the attempt: %s",
                endpoint.id,
                delivery.org,
                delivery.first_sid,
                delivery.last_sid,
                exc,
            )
        finally:
            self._claimed -= 1
            self._wake.set()

    async def _attempt(self, client: httpx.AsyncClient, endpoint: Endpoint, d: Delivery) -> None:
        body = body_of(d)
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": d.webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._keys, d.webhook_id, timestamp, body),
        }
        status: int | None = None
        error: str | None = None
        self.in_flight += 1
        try:
            response = await client.post(endpoint.url, content=body, headers=headers)
            status = response.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        finally:
            self.in_flight -= 1
        store = self._store
        if error is None:
            self.attempts["ok"] += 1
            await store.finish_delivery(d.id, owner=self._owner, outcome="ok", endpoints=self._ids)
            log.debug(
                "webhook %s org=%r sids %d-%d delivered (%d frames)",
                endpoint.id,
                d.org,
                d.first_sid,
                d.last_sid,
                len(d.frames),
            )
            return
        now = values.now_ms()
        attempt = d.attempts + 1
        if now - d.first_attempt_at >= self._retry_ms:
            self.attempts["parked"] += 1
            await store.finish_delivery(
                d.id, owner=self._owner, outcome="park", error=error, status=status
            )
            log.warning(
                "webhook %s org=%r sids %d-%d attempt %d failed (%s): parked after %.1f h "
                "of retries (replay: POST /admin/webhooks/parked/%d/replay)",
                endpoint.id,
                d.org,
                d.first_sid,
                d.last_sid,
                attempt,
                error,
                (now - d.first_attempt_at) / 3_600_000,
                d.id,
            )
            return
        self.attempts["error"] += 1
        delay = self.backoff_seconds(attempt)
        await store.finish_delivery(
            d.id,
            owner=self._owner,
            outcome="retry",
            error=error,
            status=status,
            next_attempt_at=now + round(delay * 1000),
        )
        log.warning(
            "webhook %s org=%r sids %d-%d attempt %d failed (%s): retry in %.2f s",
            endpoint.id,
            d.org,
            d.first_sid,
            d.last_sid,
            attempt,
            error,
            delay,
        )

    def backoff_seconds(self, attempt: int) -> float:
        """Delay after failed attempt ``attempt`` (1, 2, ...): doubling from
        ``--webhook-backoff-seconds``, capped, with "equal jitter" (half fixed, half
        random) so that a receiver coming back is not hit by every batch at once."""
        ceiling = min(self._backoff_max, self._backoff * 2 ** min(attempt - 1, 60))
        return ceiling / 2 + random.uniform(0, ceiling / 2)
