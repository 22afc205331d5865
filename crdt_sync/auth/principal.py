"""Who is asking and what they were granted.

A :class:`Grant` is a tuple of document-name globs and one mode. Glob syntax, chosen
for slash-separated doc names (``issue/123``, ``wiki/team/page``):

- ``*`` matches any run of characters **except** ``/`` (``issue/*`` matches
  ``issue/1`` but not ``issue/1/comments``);
- ``**`` matches any run of characters, ``/`` included (``wiki/**`` matches
  ``wiki/a`` and ``wiki/a/b``; ``**`` alone matches every doc);
- ``?`` matches exactly one character other than ``/``;
- every other character matches itself. There are no ``[...]`` classes, since
  doc names may contain brackets.

Patterns match the whole name, case-sensitively. The org (tenant) is not part of
the pattern: a grant only ever applies inside its principal's org.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, get_args

Mode = Literal["read", "write", "admin"]
MODES: tuple[Mode, ...] = get_args(Mode)
_RANK = {mode: rank for rank, mode in enumerate(MODES)}

DEFAULT_ORG = "default"
ANONYMOUS = "anonymous"
ALL_DOCS = "**"


def mode_rank(mode: str) -> int:
    """``read`` < ``write`` < ``admin``.

    Raises:
        ValueError: not one of the three modes.
    """
    try:
        return _RANK[mode]
    except KeyError:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}") from None


@lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """The regular expression for one doc glob (see the module docstring)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def glob_matches(pattern: str, name: str) -> bool:
    """Whether doc ``name`` matches ``pattern`` as a whole."""
    return compile_glob(pattern).fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class Grant:
    """The docs a principal may touch and how far.

    Args:
        docs: Glob patterns over doc names; empty means no docs at all.
        mode: ``read`` (sync, see and publish awareness), ``write`` (also send
            updates and mutations) or ``admin`` (also admin routes such as revoke).
    """

    docs: tuple[str, ...]
    mode: Mode

    def __post_init__(self) -> None:
        if isinstance(self.docs, str) or not all(isinstance(d, str) for d in self.docs):
            raise TypeError("Grant.docs must be a tuple of glob strings")
        object.__setattr__(self, "docs", tuple(self.docs))
        mode_rank(self.mode)

    @classmethod
    def everything(cls) -> Grant:
        """Every doc, admin: what an unauthenticated server grants."""
        return cls((ALL_DOCS,), "admin")

    def allows_mode(self, need: str) -> bool:
        """Whether the mode reaches ``need`` (``admin`` ⊇ ``write`` ⊇ ``read``)."""
        return _RANK[self.mode] >= mode_rank(need)

    def covers(self, doc_name: str) -> bool:
        """Whether any pattern matches ``doc_name`` (mode aside)."""
        return any(glob_matches(pattern, doc_name) for pattern in self.docs)

    def allows(self, doc_name: str | None, need: str) -> bool:
        """Whether ``need`` on ``doc_name`` is granted.

        Args:
            doc_name: The doc; ``None`` for an operation on no particular doc
                (``GET /docs``, the frame feed, ``/admin/*``), which needs the
                mode only. Such routes must still filter what they return with
                :meth:`covers`.
            need: ``read``, ``write`` or ``admin``.
        """
        if not self.allows_mode(need):
            return False
        return doc_name is None or self.covers(doc_name)


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller, handed to every route by the front door.

    Args:
        org: Tenant; every doc, record and frame the caller sees belongs to it.
        actor: Who (the token's ``sub``); becomes ``who`` on frames.
        grant: What the caller may touch inside ``org``.
        expires_at: Epoch seconds after which the credential is void (the token's
            ``exp``); ``None`` when it does not expire (auth off, or a webhook
            answer without ``exp``). Long-lived sessions close at this time.
        authenticated: ``False`` only for :meth:`anonymous` (auth off); a token
            whose ``sub`` happens to be ``anonymous`` is still authenticated.
    """

    org: str
    actor: str
    grant: Grant = field(default_factory=Grant.everything)
    expires_at: float | None = None
    authenticated: bool = True

    @classmethod
    def anonymous(cls) -> Principal:
        """``default``/``anonymous``/everything: the principal while auth is off."""
        return cls(DEFAULT_ORG, ANONYMOUS, Grant.everything(), authenticated=False)

    @property
    def is_anonymous(self) -> bool:
        """Whether this is the auth-off principal (no credential at all)."""
        return not self.authenticated

    def limit_key(self, client_ip: str | None) -> tuple[str, ...]:
        """The key rate and connection limits count under: the actor (within its
        org), or the client address while anonymous, never a client-chosen header."""
        if self.is_anonymous:
            return ("ip", client_ip or "?")
        return ("actor", self.org, self.actor)

    def seconds_left(self, now: float) -> float | None:
        """Seconds until :attr:`expires_at` (may be negative), ``None`` if it never expires."""
        return None if self.expires_at is None else self.expires_at - now


#: Where the front door leaves the principal in an ASGI scope (HTTP and WebSocket).
SCOPE_KEY = "crdt_sync.principal"


def set_principal(scope: dict[str, Any], principal: Principal) -> None:
    """Hand ``principal`` to the route: the front door's one write to the scope."""
    scope[SCOPE_KEY] = principal


def principal_of(scope: Mapping[str, Any]) -> Principal:
    """The principal the front door authenticated for this request or connection.

    Raises:
        RuntimeError: the request did not come through the front door (a bug: no
            route may go around it).
    """
    principal = scope.get(SCOPE_KEY)
    if not isinstance(principal, Principal):
        raise RuntimeError("expected an authenticated principal, got none (front door bypassed)")
    return principal
