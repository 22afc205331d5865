"""One call for the front door: ``await authenticate(token, doc, mode) -> Principal``.

Modes of operation, from the keys configured:

- **open** (no secret, JWKS or webhook): every caller is
  :meth:`Principal.anonymous` (``default``/``anonymous``/everything), token or not.
- **tokens** (:class:`~.tokens.TokenVerifier`): the JWT decides.
- **webhook** (:class:`~.webhook.WebhookAuthenticator`): the host app decides.
- **both**: a token the verifier accepts is used as is; one it refuses for any
  reason is then put to the webhook (which may know opaque session tokens), and
  the webhook's answer is final.

Then the grant must cover ``doc`` with ``mode``, else 403. Every refusal is an
:class:`AuthError` carrying the HTTP status (401: who are you; 403: not yours) and a
short reason; WebSocket routes map them to 4401 / 4403.
"""

from __future__ import annotations

import logging

import anyio
import anyio.to_thread

from .principal import Mode, Principal, mode_rank
from .tokens import TokenError, TokenVerifier
from .webhook import WebhookAuthenticator, WebhookDenied

logger = logging.getLogger(__name__)


class AuthError(Exception):
    """A refused request: ``status`` 401 or 403 and a short machine ``reason``.

    ``reason`` is one of the :class:`~.tokens.TokenError` reasons, or ``forbidden``
    (authenticated, but the grant does not cover the doc or the mode).
    """

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(f"{status} {reason}: {detail}" if detail else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.detail = detail or reason

    @property
    def close_code(self) -> int:
        """The WebSocket close code for this refusal (4401 or 4403)."""
        return 4000 + self.status


class Authenticator:
    """Combines a token verifier and/or a webhook.

    Args:
        verifier: Checks JWTs (``--auth-secret`` / ``--auth-jwks``).
        webhook: Asks the host application (``--auth-webhook``).
    """

    def __init__(
        self,
        verifier: TokenVerifier | None = None,
        webhook: WebhookAuthenticator | None = None,
    ) -> None:
        self.verifier = verifier
        self.webhook = webhook
        # JWKS-URL verification may block on a fetch: its own few threads, so a flood
        # of unknown-kid tokens cannot take the threads the rest of the app runs on.
        self._jwks_threads = anyio.CapacityLimiter(4)

    @property
    def open(self) -> bool:
        """No keys and no webhook: everyone is anonymous with every right."""
        return self.verifier is None and self.webhook is None

    async def aclose(self) -> None:
        if self.webhook is not None:
            await self.webhook.aclose()

    async def identify(self, token: str | None, doc: str | None, mode: Mode) -> Principal:
        """Who ``token`` is, without checking the grant (see :meth:`authenticate`).

        Raises:
            AuthError: 401, the token is missing or does not authenticate.
        """
        if self.open:
            return Principal.anonymous()
        if not token:
            raise AuthError(401, "missing", "no token")
        failure: TokenError | None = None
        if self.verifier is not None:
            try:
                if self.verifier.blocking:
                    return await anyio.to_thread.run_sync(
                        self.verifier.verify, token, limiter=self._jwks_threads
                    )
                return self.verifier.verify(token)
            except TokenError as exc:
                failure = exc
        if self.webhook is not None:
            try:
                return await self.webhook.check(token, doc, mode)
            except WebhookDenied as exc:
                raise AuthError(exc.status, exc.reason, exc.detail) from None
        assert failure is not None
        raise AuthError(401, failure.reason, failure.detail)

    async def authenticate(self, token: str | None, doc: str | None, mode: Mode) -> Principal:
        """The principal of a request for ``mode`` on ``doc`` (``None``: no single doc).

        Raises:
            AuthError: 401 (missing/invalid/expired token) or 403 (``forbidden``:
                the grant does not cover ``doc`` or ``mode``).
        """
        mode_rank(mode)
        principal = await self.identify(token, doc, mode)
        if not principal.grant.allows(doc, mode):
            what = "this doc" if doc is not None and principal.grant.allows_mode(mode) else mode
            raise AuthError(403, "forbidden", f"the grant does not cover {what}")
        return principal
