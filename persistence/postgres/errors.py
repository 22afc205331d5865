"""How PostgreSQL failures map onto the store's errors, and how a server is named in them."""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict

from persistence.store import StoreReadError, StoreUnavailableError, StoreWriteError

__all__ = [
    "ReadUnavailableError",
    "describe",
    "is_rolled_back",
    "is_unavailable",
    "read_error",
    "reason",
    "write_error",
]


class ReadUnavailableError(StoreUnavailableError, StoreReadError):
    """A read failed because the server cannot be reached: both a
    :class:`StoreReadError` (what read callers catch) and a
    :class:`StoreUnavailableError` (retry later, 503)."""


def is_rolled_back(exc: BaseException) -> bool:
    """Whether PostgreSQL rolled the transaction back to break a deadlock or a
    serialisation conflict (SQLSTATE class 40): the same transaction may succeed again.

    By SQLSTATE: psycopg's ``DeadlockDetected`` and ``SerializationFailure`` are not
    subclasses of its ``TransactionRollback``.
    """
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(exc, psycopg.Error) and isinstance(sqlstate, str) and sqlstate[:2] == "40"


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the server or the connection is gone (not our SQL's fault).

    ``OperationalError`` covers refused and lost connections, a terminated backend
    (``AdminShutdown``), a server shutting down, and the pool's ``PoolTimeout``.
    Deadlocks and serialisation failures are ``OperationalError`` too, but they are
    answered by retrying the transaction, not as an outage (see the writer).
    """
    return isinstance(exc, psycopg.OperationalError) and not is_rolled_back(exc)


def describe(dsn: str) -> str:
    """``host:port/dbname`` of ``dsn`` (no user, no password), for logs and errors."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "PostgreSQL (unparsable DSN)"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or params.get("user") or ""
    return f"postgresql://{host}:{port}/{dbname}"


def write_error(where: str, exc: BaseException) -> StoreWriteError:
    error: StoreWriteError
    if is_unavailable(exc):
        error = StoreUnavailableError(f"PostgreSQL {where} is unavailable: {reason(exc)}")
    else:
        error = StoreWriteError(f"write to PostgreSQL {where} failed: {reason(exc)}")
    error.__cause__ = exc
    return error


def read_error(where: str, exc: BaseException) -> StoreReadError:
    error: StoreReadError
    if is_unavailable(exc):
        error = ReadUnavailableError(f"PostgreSQL {where} is unavailable: {reason(exc)}")
    else:
        error = StoreReadError(f"cannot read PostgreSQL {where}: {reason(exc)}")
    error.__cause__ = exc
    return error


def reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
