"""Server settings: one dataclass; every field is a CLI flag and a ``CRDT_SYNC_*`` variable.

``--room-idle-seconds`` is read from ``CRDT_SYNC_ROOM_IDLE_SECONDS`` when the flag is
not given. A value that does not parse or is out of range is a
:class:`SettingsError` naming the flag and the variable, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

ENV_PREFIX = "CRDT_SYNC_"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
SERVERS = ("uvicorn", "hypercorn", "granian")


class SettingsError(ValueError):
    """A setting that does not parse or is out of range."""


def _opt(default: Any, help: str, *, minimum: float | None = None, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, "minimum": minimum, **extra})


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = _opt("127.0.0.1", "address to listen on")
    server: str = _opt(
        "uvicorn",
        "the ASGI server that runs the app (granian: experimental, see README)",
        choices=SERVERS,
    )
    port: int = _opt(1234, "TCP port to listen on (0 = any free port)", minimum=0, maximum=65535)
    db: str = _opt("./crdt-sync.db", "SQLite database file (created if missing)")
    log_level: str = _opt("info", "log level", choices=LOG_LEVELS)
    room_idle_seconds: float = _opt(
        30.0,
        "unload a room this long after its last client left (state is stored first)",
        minimum=0.1,
    )
    max_message_bytes: int = _opt(
        16 * 1024 * 1024,
        "largest WebSocket message accepted; larger ones close with 1009",
        minimum=1024,
    )
    send_queue_messages: int = _opt(
        4096,
        "per-connection send queue bound in messages; a client past it is closed (4429)",
        minimum=1,
    )
    send_queue_bytes: int = _opt(
        64 * 1024 * 1024,
        "per-connection send queue bound in bytes; past it: close 4429",
        minimum=1024,
    )
    ping_interval: float = _opt(
        10.0, "seconds of client silence before the server pings/probes it", minimum=0.1
    )
    ping_timeout: float = _opt(
        30.0, "seconds of client silence after which the connection is closed (4408)", minimum=0.2
    )
    commit_interval_ms: float = _opt(
        5.0, "group commit window: updates arriving within it share one transaction", minimum=0
    )
    compact_updates: int = _opt(
        500, "fold a document's update log into a snapshot after this many updates", minimum=1
    )
    shutdown_timeout: float = _opt(
        5.0, "seconds to wait for connections and writes to finish on SIGINT/SIGTERM", minimum=0
    )
    frame_coalesce_ms: float = _opt(
        200.0,
        "coalesce a record's Yjs updates into one SyncFrame per this many milliseconds",
        minimum=0,
        maximum=60_000,
    )
    frame_retention: int = _opt(
        1_000_000,
        "SyncFrames kept per tenant; a delta request from before them gets 410",
        minimum=1,
    )
    delta_min_interval_ms: float = _opt(
        100.0,
        "at most one delta/records request per client per this many milliseconds (else 429)",
        minimum=0,
    )
    delta_max_concurrency: int = _opt(
        5, "delta/records requests in flight per tenant; more get 429", minimum=1
    )
    max_mutations: int = _opt(
        1000, "most mutations in one POST /sync/v1/mutations request", minimum=1
    )
    # -- input contract (issue 10) --
    max_mutation_fields: int = _opt(
        1000,
        "most fields in one mutation's p (more: 422 too_many_fields naming the mutation)",
        minimum=1,
        maximum=1_000_000,
    )
    max_mutation_bytes: int = _opt(
        1024 * 1024,
        "largest mutation, as JSON bytes (larger: 413 mutation_too_large naming the mutation)",
        minimum=64,
        maximum=1 << 40,
    )
    # -- bounds on what one client can make the server hold (issue 10, "bounds") ----
    max_awareness_ids_per_connection: int = _opt(
        64,
        "awareness client ids whose state one Yjs connection may carry; past it: close 4460",
        minimum=1,
        maximum=100_000,
    )
    max_awareness_ids_per_room: int = _opt(
        10_000,
        "live awareness client ids per room; a connection adding more is closed with 4460",
        minimum=1,
        maximum=1_000_000,
    )
    max_awareness_state_bytes: int = _opt(
        64 * 1024,
        "largest awareness state (JSON text) of one client id; larger: close 4460",
        minimum=64,
        maximum=16 * 1024 * 1024,
    )
    max_pending_bytes: int = _opt(
        1024 * 1024,
        "bytes of updates a room holds waiting for missing dependencies; past it the "
        "sender is closed with 4413 (HTTP: 413) and the pending state dropped",
        minimum=0,
        maximum=1024 * 1024 * 1024,
    )
    max_views_per_connection: int = _opt(
        100,
        "records one frame-feed connection may view or watch at once; past it: close 4461",
        minimum=1,
        maximum=100_000,
    )
    max_rooms: int = _opt(
        10_000,
        "rooms loaded at once (idle ones are unloaded first); past it a join is closed "
        "with 1013 and an HTTP request gets 503",
        minimum=1,
        maximum=10_000_000,
    )
    max_queued_write_bytes: int = _opt(
        64 * 1024 * 1024,
        "bytes of writes queued for the store's writer; past it writers wait for space",
        minimum=64 * 1024,
        maximum=16 * 1024 * 1024 * 1024,
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            minimum = f.metadata.get("minimum")
            maximum = f.metadata.get("maximum")
            choices = f.metadata.get("choices")
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, float) and not math.isfinite(value):
                # NaN passes every comparison below, inf every minimum.
                raise SettingsError(f"{flag} must be a finite number, got {value}")
            if minimum is not None and value < minimum:
                raise SettingsError(f"{flag} must be >= {minimum}, got {value}")
            if maximum is not None and value > maximum:
                raise SettingsError(f"{flag} must be <= {maximum}, got {value}")
            if choices is not None and value not in choices:
                raise SettingsError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
        if self.ping_timeout <= self.ping_interval:
            raise SettingsError("--ping-timeout must be greater than --ping-interval")


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _finite_number(raw: str) -> float:
    """A float flag's value: finite only (``float()`` also takes nan, inf, infinity)."""
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"{raw!r} is not a finite number")
    return value


_finite_number.__name__ = "finite number"  # argparse: "invalid finite number value: 'nan'"


def _parser_for(kind: type | str) -> Callable[[str], Any]:
    kind_name = kind if isinstance(kind, str) else kind.__name__
    return {"int": int, "float": _finite_number, "str": str}[kind_name]


def _kind_word(kind: type | str) -> str:
    kind_name = kind if isinstance(kind, str) else kind.__name__
    return {"int": "integer", "float": "finite number", "str": "string"}[kind_name]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting; help shows the default and the environment variable."""
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        extra = {}
        if "choices" in f.metadata:
            extra["choices"] = f.metadata["choices"]
        parser.add_argument(
            flag,
            dest=f.name,
            default=None,
            type=_parser_for(f.type),
            metavar=f.name.upper() if f.name != "db" else "PATH",
            help=f"{f.metadata['help']} (default: {f.default}; env: {env_name(f.name)})",
            **extra,
        )


def from_sources(args: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from parsed flags, falling back to ``CRDT_SYNC_*`` variables, then defaults.

    Raises:
        SettingsError: a value does not parse or is out of range.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        value = args.get(f.name)
        if value is None and env_name(f.name) in environ:
            raw = environ[env_name(f.name)]
            try:
                value = _parser_for(f.type)(raw.strip())
            except ValueError:
                raise SettingsError(
                    f"{env_name(f.name)}={raw!r} is not a valid {_kind_word(f.type)} for --"
                    + f.name.replace("_", "-")
                ) from None
        if value is not None:
            values[f.name] = value
    return Settings(**values)
