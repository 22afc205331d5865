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
LOOPS = ("auto", "uvloop", "asyncio")


class SettingsError(ValueError):
    """A setting that does not parse or is out of range."""


def _opt(default: Any, help: str, *, minimum: float | None = None, **extra: Any) -> Any:
    """A setting: its default, help text, bounds and flag options (``choices``,
    ``split_flag``: whether a list flag's value is split on commas)."""
    # A secret stays out of repr(settings), so no log line or traceback can show it.
    return field(
        default=default,
        repr=not extra.get("secret", False),
        metadata={"help": help, "minimum": minimum, **extra},
    )


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = _opt("127.0.0.1", "address to listen on")
    server: str = _opt(
        "uvicorn",
        "the ASGI server that runs the app (granian: experimental, see README)",
        choices=SERVERS,
    )
    loop: str = _opt(
        "auto",
        "event loop: uvloop (auto: uvloop where it is installed, else asyncio's own)",
        choices=LOOPS,
    )
    port: int = _opt(1234, "TCP port to listen on (0 = any free port)", minimum=0, maximum=65535)
    workers: int = _opt(
        1,
        "server processes sharing the port, each a node of the cluster (more than 1 needs "
        "--database-url and --redis-url)",
        minimum=1,
        maximum=64,
    )
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
    # -- the delta feed as a sidecar's (issue 15) --
    max_long_poll_ms: int = _opt(
        60_000,
        "longest wait of GET /sync/v1/delta?live=1 (timeout_ms above it: 400); "
        "the default wait is 20000 ms or this, whichever is less",
        minimum=1,
        maximum=3_600_000,
    )
    max_long_polls: int = _opt(
        10_000, "long-polls held at once on this node; more get 503 with Retry-After", minimum=1
    )
    delta_cache_max_age: int = _opt(
        86_400,
        "max-age in seconds of a delta page whose range is fixed (Cache-Control: public, "
        "immutable); 0 makes every page no-store",
        minimum=0,
        maximum=31_536_000,
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

    # -- auth, tenants and abuse limits (issue 11, "frontdoor") ----------------------
    auth_secret: tuple[str, ...] = _opt(
        (),
        "accepted HS256 secret (>= 32 bytes); repeat for rotation, the first signs "
        "(env: comma-separated)",
        split_flag=False,
        secret=True,
    )
    auth_jwks: str = _opt("", "JWKS file or http(s) URL of asymmetric keys, matched by kid")
    auth_webhook: str = _opt(
        "", "URL the host app answers token checks at (POST {token, doc, mode}); fails closed"
    )
    auth_audience: str = _opt("", "when set, a token's aud must name it")
    auth_issuer: str = _opt("", "when set, a token's iss must equal it")
    auth_leeway: float = _opt(
        0.0, "seconds of clock skew tolerated on exp/nbf/iat", minimum=0, maximum=3600
    )
    auth_webhook_timeout: float = _opt(
        2.0, "seconds the auth webhook has to answer (then: refused)", minimum=0.05, maximum=60
    )
    auth_webhook_cache_seconds: float = _opt(
        30.0, "how long a webhook yes is reused (0: ask every time)", minimum=0, maximum=3600
    )
    require_auth: bool = _opt(False, "refuse to start without --auth-secret/-jwks/-webhook")
    allow_open: bool = _opt(
        False, "allow running without auth on a non-loopback address (everyone is admin)"
    )
    allowed_origins: tuple[str, ...] = _opt(
        (),
        "browser origins allowed to open WebSockets and call the HTTP API (comma-separated; "
        "'*' = any); default: own origin, plus localhost origins while bound to loopback",
    )
    rate_limit_window: float = _opt(
        10.0, "sliding window of the rate limits, in seconds", minimum=0.1, maximum=3600
    )
    rate_limit_ws_messages: int = _opt(
        10_000,
        "WebSocket messages per window per actor (per IP while open); past it: close 4429 "
        "(0: no limit)",
        minimum=0,
        maximum=100_000_000,
    )
    rate_limit_http_requests: int = _opt(
        2000,
        "HTTP requests per window per actor (per IP while open); past it: 429 with "
        "Retry-After (0: no limit)",
        minimum=0,
        maximum=100_000_000,
    )
    max_connections_per_actor: int = _opt(
        100,
        "open WebSocket connections (and streams) per actor; past it: close 4429 / HTTP 429",
        minimum=1,
        maximum=10_000_000,
    )
    max_connections_per_ip: int = _opt(
        1000,
        "open WebSocket connections (and streams) per client address; past it: 4429 / 429",
        minimum=1,
        maximum=10_000_000,
    )
    max_doc_bytes: int = _opt(
        64 * 1024 * 1024,
        "largest document (encoded state); a write that would grow one past it is refused "
        "with the doc intact (Yjs: close 4413; HTTP: 413 doc_too_large)",
        minimum=1024,
        maximum=1 << 40,
    )

    # -- several nodes (issue 12) --------------------------------------------------
    database_url: str = _opt(
        "",
        "shared store of several nodes: postgresql://user@host:port/db (default: the "
        "SQLite file of --db, one node)",
        secret=True,
    )
    redis_url: str = _opt(
        "",
        "Redis that carries room updates, awareness and frames between nodes "
        "(redis://host:port/n); needs --database-url",
        secret=True,
    )
    node_id: str = _opt(
        "", "this node's id in the cluster (default: host name, port and process id)"
    )
    redis_prefix: str = _opt("crdt-sync", "prefix of every Redis key and channel (one per cluster)")

    # -- document versions (issue 15, item 4) ------------------------------------------
    auto_versions: bool = _opt(
        True,
        "take versions of docs automatically after editing (--version-every-updates, "
        "--version-idle-seconds); off: only POST /docs/{doc}/versions and restores make them",
    )
    version_every_updates: int = _opt(
        1000,
        "take a version after this many of this node's own changes to a doc (0: no such trigger)",
        minimum=0,
        maximum=100_000_000,
    )
    version_idle_seconds: float = _opt(
        60.0,
        "take a version once a doc changed since its last one has been quiet this long "
        "(0: no such trigger)",
        minimum=0,
        maximum=7 * 86400,
    )
    version_keep_all_hours: float = _opt(
        24.0, "retention: keep every version younger than this", minimum=0, maximum=24 * 3650
    )
    version_hourly_days: float = _opt(
        7.0,
        "retention: keep one version per hour younger than this, one per day older",
        minimum=0,
        maximum=3650,
    )
    version_max_bytes_ratio: float = _opt(
        20.0,
        "retention: a doc's versions hold at most this many times its current size "
        "(or --version-min-budget-bytes, if more)",
        minimum=0,
        maximum=1_000_000,
    )
    version_min_budget_bytes: int = _opt(
        4 * 1024 * 1024,
        "retention: bytes a doc's versions may always hold, however small the doc",
        minimum=0,
        maximum=1 << 40,
    )

    # -- outgoing webhooks (issue 15, item 5) -------------------------------------------
    webhook: tuple[str, ...] = _opt(
        (),
        "POST batches of frames to this http(s) URL; TYPES=URL (types joined by +, e.g. "
        "card+column=https://app/hook) sends only those record types; repeat for more",
        split_flag=False,
        secret=True,  # a URL may carry a token
    )
    webhook_secret: tuple[str, ...] = _opt(
        (),
        "whsec_<base64> key that signs webhooks (Standard Webhooks); several (repeated or "
        "comma-separated) sign each request with each, so secrets can rotate; required "
        "with --webhook",
        secret=True,
    )
    webhook_timeout: float = _opt(
        10.0, "seconds a webhook receiver has to answer a POST", minimum=0.1, maximum=300
    )
    webhook_retry_hours: float = _opt(
        24.0,
        "retry a failing webhook batch this long after its first attempt, then park it",
        minimum=0.0001,
        maximum=24 * 365,
    )
    webhook_backoff_seconds: float = _opt(
        1.0, "first retry delay of a failed webhook batch (doubling, jittered)", minimum=0.01
    )
    webhook_backoff_max_seconds: float = _opt(
        600.0, "longest delay between two attempts of a webhook batch", minimum=0.01
    )
    webhook_throttle_ms: int = _opt(
        1000,
        "webhook throttle per record: a record's first change goes at once, its later "
        "changes within the window wait and go together",
        minimum=0,
        maximum=3_600_000,
    )
    webhook_max_batch: int = _opt(100, "most frames in one webhook POST", minimum=1, maximum=10_000)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if _kind_name(f.type) == "list":
                if isinstance(value, str):
                    value = tuple(_split(value))
                value = tuple(str(v) for v in value)
                object.__setattr__(self, f.name, value)
                continue
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
        _check_cluster(self)
        if self.loop == "uvloop" and not uvloop_installed():
            raise SettingsError("--loop uvloop needs uvloop: pip install uvloop")
        if self.webhook or self.webhook_secret:
            from .webhooks import WebhookConfigError, endpoints_of, keys_of

            try:
                endpoints_of(self.webhook)
                keys_of(self.webhook_secret)
            except WebhookConfigError as exc:
                raise SettingsError(str(exc)) from None
            if self.webhook and not self.webhook_secret:
                raise SettingsError(
                    "--webhook needs --webhook-secret whsec_... (env CRDT_SYNC_WEBHOOK_SECRET): "
                    "receivers verify every request's signature"
                )
        if self.webhook_backoff_max_seconds < self.webhook_backoff_seconds:
            raise SettingsError(
                "--webhook-backoff-max-seconds must be >= --webhook-backoff-seconds"
            )
        from .browser_guard import InvalidOrigin, parse_allowed_origins

        try:
            parse_allowed_origins(self.allowed_origins)
        except InvalidOrigin as exc:
            raise SettingsError(f"--allowed-origins: {exc}") from None


def worker_node_id(node_id: str, index: int) -> str:
    """Worker ``index``'s node id under ``--node-id`` and ``--workers``."""
    return f"{node_id}-w{index}"


def uvloop_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("uvloop") is not None


#: Characters a node id may hold (it names Redis keys and shows in logs and metrics).
_NODE_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def _check_cluster(settings: Settings) -> None:
    """The several-node flags must make sense together: a Redis bus between nodes
    that each keep their own SQLite file would split every doc."""
    url = settings.database_url
    if url and not url.startswith(("postgresql://", "postgres://")):
        raise SettingsError(
            "--database-url must be a postgresql:// URL (SQLite is chosen with --db)"
        )
    if settings.redis_url:
        if not settings.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError("--redis-url must be a redis://, rediss:// or unix:// URL")
        if not url:
            raise SettingsError(
                "--redis-url needs --database-url: nodes must share one store "
                "(each node's own SQLite file would split every document)"
            )
    if settings.workers > 1:
        if not (url and settings.redis_url):
            raise SettingsError(
                f"--workers {settings.workers} needs --database-url and --redis-url: each "
                "worker is a node of a cluster (with SQLite every process would keep its "
                "own copy of each document)"
            )
        if settings.server == "granian":
            raise SettingsError("--workers does not run --server granian (it binds its own socket)")
    node = settings.node_id
    if node and (len(node) > 64 or not set(node) <= _NODE_ID_CHARS):
        raise SettingsError("--node-id must be 1-64 characters of letters, digits and - _ . :")
    if node and settings.workers > 1 and len(worker_node_id(node, settings.workers)) > 64:
        raise SettingsError(
            f"--node-id must leave room for the worker suffix: {node!r} + "
            f"'-w{settings.workers}' is over 64 characters"
        )
    prefix = settings.redis_prefix
    if not prefix or len(prefix) > 64 or not set(prefix) <= _NODE_ID_CHARS:
        raise SettingsError("--redis-prefix must be 1-64 characters of letters, digits and - _ . :")


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _finite_number(raw: str) -> float:
    """A float flag's value: finite only (``float()`` also takes nan, inf, infinity)."""
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"{raw!r} is not a finite number")
    return value


_finite_number.__name__ = "finite number"  # argparse: "invalid finite number value: 'nan'"


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _bool(raw: str) -> bool:
    """A bool variable: 1/true/yes/on or 0/false/no/off (any case)."""
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"{raw!r} is not a boolean")


def _split(raw: str) -> list[str]:
    """A comma-separated list, blanks dropped."""
    return [part.strip() for part in raw.split(",") if part.strip()]


def _kind_name(kind: type | str) -> str:
    name = kind if isinstance(kind, str) else kind.__name__
    return "list" if name.startswith("tuple") else name


def _parser_for(kind: type | str) -> Callable[[str], Any]:
    return {
        "int": int,
        "float": _finite_number,
        "str": str,
        "bool": _bool,
        "list": lambda raw: tuple(_split(raw)),
    }[_kind_name(kind)]


def _kind_word(kind: type | str) -> str:
    return {
        "int": "integer",
        "float": "finite number",
        "str": "string",
        "bool": "boolean (1/0, true/false, yes/no, on/off)",
        "list": "comma-separated list",
    }[_kind_name(kind)]


def _default_text(f: Any) -> str:
    if f.default == () or f.default == "":
        return "none"
    return str(f.default)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting; help shows the default and the environment variable.

    A bool is ``--flag`` / ``--no-flag``; a list is repeatable (``--flag a --flag b``),
    each value also split on commas unless the setting says otherwise (secrets).
    """
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        kind = _kind_name(f.type)
        help_text = f"{f.metadata['help']} (default: {_default_text(f)}; env: {env_name(f.name)})"
        if kind == "bool":
            parser.add_argument(
                flag,
                dest=f.name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
            continue
        if kind == "list":
            split = f.metadata.get("split_flag", True)
            parser.add_argument(
                flag,
                dest=f.name,
                default=None,
                action="append",
                type=(lambda raw: tuple(_split(raw))) if split else (lambda raw: (raw,)),
                metavar=f.name.upper(),
                help=help_text,
            )
            continue
        extra = {}
        if "choices" in f.metadata:
            extra["choices"] = f.metadata["choices"]
        parser.add_argument(
            flag,
            dest=f.name,
            default=None,
            type=_parser_for(f.type),
            metavar=f.name.upper() if f.name != "db" else "PATH",
            help=help_text,
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
        if isinstance(value, list):  # a repeatable flag: one tuple per occurrence
            value = tuple(item for part in value for item in part)
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
