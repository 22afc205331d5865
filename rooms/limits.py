"""What a room refuses so that one client cannot make the server hold unbounded memory."""

from __future__ import annotations


class LimitExceeded(Exception):
    """A client went past a bound; close it with :attr:`code` (``rooms.close_codes``).

    Args:
        code: The WebSocket close code for the offender.
        error: A short machine-readable name (HTTP error bodies).
        detail: What was exceeded, naming the flag.
    """

    def __init__(self, code: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.error = error
        self.detail = detail
