"""``crdt-sync token``: print one HS256 token for a user.

    crdt-sync token --sub alice --org acme --docs 'issue/*' --mode write --ttl 1h

The secret is ``--secret`` or the first of the comma-separated
``CRDT_SYNC_AUTH_SECRET`` (the one a server with rotation lists first).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

from .principal import ALL_DOCS, DEFAULT_ORG, MODES
from .startup import secrets_from
from .tokens import issue_token

SECRET_ENV = "CRDT_SYNC_AUTH_SECRET"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TTL_SECONDS = 366 * 86400


def parse_ttl(text: str) -> int:
    """Seconds in ``30s``, ``15m``, ``1h``, ``7d`` or a bare number of seconds.

    Raises:
        argparse.ArgumentTypeError: not of that form, zero, or over 366 days.
    """
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"ttl must look like 30s, 15m, 1h or 7d, got {text!r}")
    seconds = int(match[1]) * _UNITS[match[2] or "s"]
    if not 0 < seconds <= MAX_TTL_SECONDS:
        raise argparse.ArgumentTypeError(f"ttl must be between 1s and 366d, got {text!r}")
    return seconds


def add_token_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``token`` to the ``crdt-sync`` subcommands; it runs :func:`run_token_command`."""
    parser = subparsers.add_parser(
        "token",
        help="print a signed access token (HS256)",
        description="Print one HS256 JWT for the server's --auth-secret.",
    )
    parser.add_argument("--sub", required=True, help="the actor (becomes 'who')")
    parser.add_argument("--org", default=DEFAULT_ORG, help="tenant (default: %(default)s)")
    parser.add_argument(
        "--docs",
        action="append",
        metavar="GLOB",
        help="doc glob ('*' stops at '/', '**' does not); repeatable (default: **, every doc)",
    )
    parser.add_argument("--mode", choices=MODES, default="read", help="default: %(default)s")
    parser.add_argument(
        "--ttl", type=parse_ttl, default=3600, help="lifetime: 30s, 15m, 1h, 7d (default: 1h)"
    )
    parser.add_argument("--aud", help="audience claim (for --auth-audience)")
    parser.add_argument("--iss", help="issuer claim (for --auth-issuer)")
    parser.add_argument(
        "--secret",
        help=f"HS256 secret, at least 32 bytes (default: first of ${SECRET_ENV}, comma-separated)",
    )
    parser.set_defaults(run=run_token_command)
    return parser


def run_token_command(args: argparse.Namespace) -> int:
    """Print the token for ``args``; 2 with a message on stderr if it cannot be made."""
    secret = args.secret
    if not secret:
        listed = secrets_from(None, os.environ.get(SECRET_ENV))
        secret = listed[0] if listed else None
    if not secret:
        print(f"crdt-sync token: error: give --secret or set {SECRET_ENV}", file=sys.stderr)
        return 2
    try:
        token = issue_token(
            secret,
            sub=args.sub,
            org=args.org,
            docs=args.docs or [ALL_DOCS],
            mode=args.mode,
            ttl_seconds=args.ttl,
            aud=args.aud,
            iss=args.iss,
        )
    except ValueError as exc:
        print(f"crdt-sync token: error: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0
