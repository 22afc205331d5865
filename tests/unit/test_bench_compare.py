"""bench/compare.py starts crdt-sync with flags that let its load through.

Every load client comes from 127.0.0.1 as one anonymous actor; with the server's
per-address defaults (1,000 sockets, 10,000 messages per 10 s) scenario c (2,000 sockets,
2,000 updates/s) would be closed with 4429 and measure the limits, not the server.
"""

from __future__ import annotations

from pathlib import Path

from bench.compare import Server
from crdt_sync.cli import build_parser
from crdt_sync.settings import from_sources


def test_the_benchmark_server_admits_scenario_c(tmp_path: Path) -> None:
    cmd, _env, _ready = Server("crdt-sync", tmp_path).command()
    args = build_parser().parse_args(cmd[cmd.index("serve") :])
    settings = from_sources(vars(args), environ={})
    sockets = 200 * 10  # scenario c: 200 rooms x 10 clients
    assert settings.max_connections_per_ip >= sockets
    assert settings.max_connections_per_actor >= sockets
    assert settings.rate_limit_ws_messages == 0
    assert settings.host == "127.0.0.1"
