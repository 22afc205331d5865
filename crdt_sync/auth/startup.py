"""Building the authenticator from settings, and the rule on running open.

Without a secret, a JWKS or a webhook the server is *open*: everyone is
``default``/``anonymous`` with every right. That is fine on a laptop and a hazard
anywhere else, so:

- open on a loopback address: allowed, with a warning at start;
- open on any other address: refused unless ``--allow-open`` (then a warning);
- ``--require-auth``: refused whenever open, ``--allow-open`` or not.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from .authenticator import Authenticator
from .tokens import TokenVerifier
from .webhook import WebhookAuthenticator

OPEN_WARNING = (
    "auth is OFF: no --auth-secret, --auth-jwks or --auth-webhook; every client is "
    "'anonymous' in org 'default' and may read and write every document"
)


class OpenServerRefused(Exception):
    """Starting without authentication was not allowed."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a listen address or name) is only reachable from this machine."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secrets_from(flags: Sequence[str] | None, env_value: str | None) -> tuple[str, ...]:
    """Accepted secrets: the repeated ``--auth-secret`` flags if any, else the
    comma-separated ``CRDT_SYNC_AUTH_SECRET``; blanks dropped, order kept (first = newest,
    the one ``crdt-sync token`` signs with)."""
    if flags:
        return tuple(s for s in (f.strip() for f in flags) if s)
    if env_value:
        return tuple(s for s in (p.strip() for p in env_value.split(",")) if s)
    return ()


def check_open_policy(
    *, is_open: bool, host: str, require_auth: bool, allow_open: bool
) -> str | None:
    """The warning to log at start (``None``: auth is on).

    Raises:
        OpenServerRefused: open with ``--require-auth``, or open on a non-loopback
            address without ``--allow-open``.
    """
    if not is_open:
        return None
    if require_auth:
        raise OpenServerRefused(
            "--require-auth is set but no --auth-secret, --auth-jwks or --auth-webhook is given"
        )
    if not is_loopback(host) and not allow_open:
        raise OpenServerRefused(
            f"refusing to listen on {host!r} without authentication; give --auth-secret, "
            "--auth-jwks or --auth-webhook, or --allow-open to run open on purpose"
        )
    return OPEN_WARNING


def build_authenticator(
    *,
    secrets: Sequence[str] = (),
    jwks: str | None = None,
    webhook: str | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    leeway: float = 0.0,
    webhook_timeout: float = 2.0,
    webhook_cache_seconds: float = 30.0,
) -> Authenticator:
    """The :class:`Authenticator` for these settings (open when all three are empty).

    Raises:
        ValueError: a short secret or an unloadable JWKS file (a startup error).
    """
    verifier = None
    if secrets or jwks:
        verifier = TokenVerifier(
            secrets, jwks or None, audience=audience, issuer=issuer, leeway=leeway
        )
    hook = None
    if webhook:
        hook = WebhookAuthenticator(
            webhook, timeout=webhook_timeout, cache_seconds=webhook_cache_seconds
        )
    return Authenticator(verifier, hook)
