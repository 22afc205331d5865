"""Authentication: who a request is (:class:`Principal`) and what it may touch (:class:`Grant`).

Modules, one concept each:

- :mod:`.principal`: ``Principal(org, actor, grant)`` and ``Grant(docs, mode)``.
- :mod:`.tokens`: JWT verification (HS256 secrets with rotation, JWKS keys by ``kid``).
- :mod:`.extract`: the token of an ASGI scope (query, ``Authorization``, subprotocol).
- :mod:`.webhook`: ask the host application instead (``--auth-webhook``), failing closed.
- :mod:`.authenticator`: one ``authenticate(token, doc, mode)`` over the above.
- :mod:`.startup`: building the authenticator from settings; the rule on running open.
- :mod:`.token_command`: ``crdt-sync token`` prints a signed token.
"""

from __future__ import annotations

from .authenticator import Authenticator, AuthError
from .principal import Grant, Principal
from .tokens import TokenError, TokenVerifier, issue_token

__all__ = [
    "AuthError",
    "Authenticator",
    "Grant",
    "Principal",
    "TokenError",
    "TokenVerifier",
    "issue_token",
]
