"""``--auth-webhook URL``: the host application decides who a token is.

For each (token, doc, mode) the server POSTs ``{"token", "doc", "mode"}`` as JSON and
expects ``200`` with ``{"sub", "org", "docs", "mode", "exp"}`` (``org``, ``docs``,
``mode`` default as for a JWT, :mod:`.tokens`; ``exp`` is optional). The answer is
the principal's whole grant; the caller still checks it covers ``doc``/``mode``.

Fails closed: a timeout, a connection error, a non-2xx answer, a body that is not
JSON or not a valid claim set, or an ``exp`` already past all deny. The webhook's
own ``401``/``403`` are passed on with that status (reason ``invalid_claims``);
anything else it does wrong is reason ``unavailable`` (status 401).

Allowed answers are cached per (token digest, doc, mode) for ``cache_seconds`` or
until ``exp``, whichever is sooner, in a bounded LRU; refusals are not cached (the
rate limiter bounds how often a client can make us ask). The cache keys hold a
SHA-256 of the token, never the token.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import httpx

from .principal import Principal
from .tokens import TokenError, principal_from_claims

logger = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 64 * 1024


class WebhookDenied(TokenError):
    """The webhook answered no (``status`` 401 or 403) or could not answer (401)."""

    def __init__(self, reason: Any, detail: str, status: int = 401) -> None:
        super().__init__(reason, detail)
        self.status = status


class WebhookAuthenticator:
    """Asks ``url`` about tokens; caches yes-answers briefly.

    Args:
        url: The endpoint to POST to.
        timeout: Seconds for the whole request (connect + answer).
        cache_seconds: How long a yes is reused (0: never cached).
        cache_size: Most cached answers; the least recently used go first.
        clock: Epoch-seconds clock (``exp`` is epoch seconds).
        client: An ``httpx.AsyncClient`` to use (default: one owned by this object).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 2.0,
        cache_seconds: float = 30.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.cache_size = cache_size
        self._clock = clock
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._cache: OrderedDict[tuple[str, str | None, str], tuple[float, Principal]] = (
            OrderedDict()
        )
        self.requests = 0
        self.cache_hits = 0

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def _cached(self, key: tuple[str, str | None, str], now: float) -> Principal | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        until, principal = entry
        if now >= until:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return principal

    def _remember(self, key: tuple[str, str | None, str], principal: Principal, now: float) -> None:
        until = now + self.cache_seconds
        if principal.expires_at is not None:
            until = min(until, principal.expires_at)
        if until <= now or self.cache_size <= 0:
            return
        self._cache[key] = (until, principal)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def check(self, token: str, doc: str | None, mode: str) -> Principal:
        """The principal the webhook says ``token`` is, for ``mode`` on ``doc``.

        Raises:
            WebhookDenied: the webhook said no, or did not answer usably.
        """
        key = (hashlib.sha256(token.encode()).hexdigest(), doc, mode)
        now = self._clock()
        cached = self._cached(key, now)
        if cached is not None:
            self.cache_hits += 1
            return cached
        self.requests += 1
        body = await self._ask({"token": token, "doc": doc, "mode": mode})
        try:
            principal = principal_from_claims(body)
        except TokenError as exc:
            logger.warning("auth webhook answer refused: %s", exc.detail)
            raise WebhookDenied("unavailable", f"webhook answer: {exc.detail}") from None
        if principal.expires_at is not None and principal.expires_at <= self._clock():
            raise WebhookDenied("expired", "webhook answer has expired")
        self._remember(key, principal, now)
        return principal

    async def _ask(self, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self._client.stream(
                "POST", self.url, json=payload, timeout=self.timeout
            ) as response:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_RESPONSE_BYTES:
                        raise WebhookDenied("unavailable", "webhook answer too large")
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            logger.warning("auth webhook unreachable: %s", type(exc).__name__)
            raise WebhookDenied("unavailable", "webhook did not answer") from None
        status = response.status_code
        if status in (401, 403):
            raise WebhookDenied("invalid_claims", f"webhook refused ({status})", status)
        if not 200 <= status < 300:
            logger.warning("auth webhook answered %d", status)
            raise WebhookDenied("unavailable", f"webhook answered {status}")
        try:
            body = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError):
            logger.warning("auth webhook answer is not JSON")
            raise WebhookDenied("unavailable", "webhook answer is not JSON") from None
        if not isinstance(body, dict):
            raise WebhookDenied("unavailable", "webhook answer is not a JSON object")
        return body
