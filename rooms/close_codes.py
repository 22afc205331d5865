"""WebSocket close codes this server sends (documented in README.md).

1000-1015 are RFC 6455 codes; 44xx/45xx follow Hocuspocus' convention of an HTTP
status plus 4000 so that an operator can read them without a table.
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    NORMAL = 1000  # the client closed, or the server ended a finished session
    GOING_AWAY = 1001  # server shutting down; reconnect to another node or later
    PROTOCOL_ERROR = 1002  # malformed y-websocket message (bad varint, unknown type, ...)
    UNSUPPORTED_DATA = 1003  # a text frame: the Yjs protocol is binary only
    INVALID_PAYLOAD = 1007  # an update pycrdt rejects, or awareness state that is not JSON
    MESSAGE_TOO_BIG = 1009  # frame larger than --max-message-bytes
    INTERNAL_ERROR = 1011  # a bug or unexpected failure inside the room
    BAD_REQUEST = 4400  # invalid document name
    NOT_FOUND = 4404  # the document was deleted while connected
    TIMEOUT = 4408  # nothing received (no pong, no reply to a sync probe) for --ping-timeout
    SINCE_TOO_OLD = 4410  # frame feed: since is older than the retained frames (bootstrap)
    SLOW_CLIENT = 4429  # outbound queue full: the client stopped reading
    LOAD_FAILED = 4500  # the stored document could not be loaded
    STORE_UNAVAILABLE = 4503  # updates cannot be persisted (disk full, read-only)
    TRY_AGAIN_LATER = 1013  # RFC 6455: --max-rooms rooms are loaded and none is idle
    PENDING_TOO_LARGE = 4413  # the room holds > --max-pending-bytes of updates missing deps
    AWARENESS_LIMIT = 4460  # > --max-awareness-ids-per-connection/-per-room awareness ids
    VIEW_LIMIT = 4461  # frame feed: > --max-views-per-connection records viewed or watched
    # -- auth and abuse limits (issue 11) --
    UNAUTHORIZED = 4401  # missing, invalid or expired token; token expired in session; revoked
    FORBIDDEN = 4403  # the token's grant does not cover this doc (Yjs: auth message first)
    RATE_LIMITED = 4429  # alias of SLOW_CLIENT: too many messages per window / connections
    DOC_TOO_LARGE = (
        4413  # alias of PENDING_TOO_LARGE: an update would grow the doc past --max-doc-bytes
    )
