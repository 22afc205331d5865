"""Live sessions (Yjs and frame-feed connections) by principal, for revocation.

Every long-lived connection registers itself with the principal it was admitted
under, the doc it is in (``None`` for the frame feed) and a ``close(code, reason)``
callback. ``POST /admin/revoke`` calls :meth:`Sessions.revoke`, which closes every
matching session at once (the close is queued on the connection; nothing here
awaits), so a revoked client is gone well within a second.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from .principal import Principal

log = logging.getLogger(__name__)

#: Close code for a revoked session: the client must reconnect with a fresh token.
REVOKED_CLOSE_CODE = 4401


@dataclass(frozen=True, slots=True)
class Session:
    id: int
    principal: Principal
    doc: str | None
    close: Callable[[int, str], None]


class Sessions:
    """The registry of live sessions of this node."""

    def __init__(self) -> None:
        self._live: dict[int, Session] = {}
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._live)

    def register(
        self, principal: Principal, doc: str | None, close: Callable[[int, str], None]
    ) -> Session:
        """Track a connection until :meth:`unregister`; returns its handle."""
        session = Session(next(self._ids), principal, doc, close)
        self._live[session.id] = session
        return session

    def unregister(self, session: Session) -> None:
        self._live.pop(session.id, None)

    def update(self, session: Session, principal: Principal) -> Session:
        """The session now runs under ``principal`` (a token renewed in band)."""
        renewed = Session(session.id, principal, session.doc, session.close)
        if session.id in self._live:
            self._live[session.id] = renewed
        return renewed

    def matching(
        self, *, org: str, sub: str | None = None, doc: str | None = None
    ) -> list[Session]:
        """Sessions of tenant ``org`` whose actor is ``sub`` and/or that are in ``doc``
        (both ``None``: every session of the org). A session of no single doc (the
        frame feed) is in ``doc`` when its grant covers it: it receives its frames."""
        return [
            s
            for s in self._live.values()
            if s.principal.org == org
            and (sub is None or s.principal.actor == sub)
            and (doc is None or s.doc == doc or (s.doc is None and s.principal.grant.covers(doc)))
        ]

    def revoke(self, *, org: str, sub: str | None = None, doc: str | None = None) -> int:
        """Close every matching session with 4401; returns how many were closed."""
        found = self.matching(org=org, sub=sub, doc=doc)
        for session in found:
            self._live.pop(session.id, None)
            session.close(REVOKED_CLOSE_CODE, "access revoked")
        log.info("revoked %d sessions org=%r sub=%r doc=%r", len(found), org, sub, doc)
        return len(found)
