"""Settings, CLI flags, environment variables, and that the README documents them."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from crdt_sync.cli import build_parser
from crdt_sync.settings import Settings, SettingsError, env_name, from_sources, worker_node_id
from rooms.close_codes import CloseCode

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def parse(*argv: str, env: dict[str, str] | None = None) -> Settings:
    args = build_parser().parse_args(["serve", *argv])
    return from_sources(vars(args), env or {})


def test_defaults() -> None:
    s = parse()
    assert (s.host, s.port, s.db, s.log_level) == ("127.0.0.1", 1234, "./crdt-sync.db", "info")
    assert s.room_idle_seconds == 30 and s.max_message_bytes == 16 * 1024 * 1024


def test_env_sets_and_flag_wins() -> None:
    env = {"CRDT_SYNC_PORT": "4321", "CRDT_SYNC_ROOM_IDLE_SECONDS": "2.5"}
    assert parse(env=env).port == 4321
    assert parse(env=env).room_idle_seconds == 2.5
    assert parse("--port", "999", env=env).port == 999


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CRDT_SYNC_PORT": "abc"}, "CRDT_SYNC_PORT='abc'"),
        ({"CRDT_SYNC_PORT": "70000"}, "--port must be <= 65535"),
        ({"CRDT_SYNC_LOG_LEVEL": "loud"}, "--log-level must be one of"),
        ({"CRDT_SYNC_PING_TIMEOUT": "5"}, "--ping-timeout must be greater"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        parse(env=env)


def test_cli_rejects_bad_env_with_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "crdt_sync", "serve"],
        env={"CRDT_SYNC_PORT": "nope", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "CRDT_SYNC_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_documents_every_option() -> None:
    serve_help = subprocess.run(
        [sys.executable, "-m", "crdt_sync", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    top_help = subprocess.run(
        [sys.executable, "-m", "crdt_sync", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "serve" in top_help
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        assert flag in serve_help
        assert env_name(f.name) in serve_help


def test_readme_documents_every_option_and_close_code() -> None:
    for f in fields(Settings):
        assert f"`--{f.name.replace('_', '-')}" in README, f.name
        assert f"`{env_name(f.name)}`" in README, f.name
    for code in CloseCode:
        assert f"| {int(code)} |" in README, code


CLUSTER = ["--database-url", "postgresql://h/db", "--redis-url", "redis://h"]


def test_workers_are_nodes_of_a_cluster() -> None:
    s = parse(*CLUSTER, "--workers", "4", "--node-id", "box")
    assert s.workers == 4
    assert [worker_node_id(s.node_id, i) for i in (1, 4)] == ["box-w1", "box-w4"]
    assert parse(*CLUSTER, env={"CRDT_SYNC_WORKERS": "3"}).workers == 3
    assert parse().workers == 1


def test_cluster_flags_parse_from_flags_and_env() -> None:
    s = parse(
        "--database-url",
        "postgresql://postgres@127.0.0.1:5432/crdt",
        "--node-id",
        "node-1",
        env={"CRDT_SYNC_REDIS_URL": "redis://127.0.0.1:6379/0"},
    )
    assert s.database_url == "postgresql://postgres@127.0.0.1:5432/crdt"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert (s.node_id, s.redis_prefix) == ("node-1", "crdt-sync")
    # URLs may hold passwords: they stay out of repr (and so out of every log line).
    assert "postgresql://" not in repr(s) and "redis://" not in repr(s)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--redis-url", "redis://127.0.0.1:6379"], "--redis-url needs --database-url"),
        (["--database-url", "sqlite:///x.db"], "--database-url must be a postgresql://"),
        (
            ["--database-url", "postgresql://h/db", "--redis-url", "http://h"],
            "--redis-url must be a redis://",
        ),
        (["--node-id", "a b"], "--node-id must be"),
        (["--node-id", "x" * 65], "--node-id must be"),
        (["--redis-prefix", "a/b"], "--redis-prefix must be"),
        (["--workers", "0"], "--workers must be >= 1"),
        (["--workers", "65"], "--workers must be <= 64"),
        (["--workers", "2"], "--workers 2 needs --database-url and --redis-url"),
        (
            ["--workers", "2", "--database-url", "postgresql://h/db"],
            "--workers 2 needs --database-url and --redis-url",
        ),
        (
            [*CLUSTER, "--workers", "2", "--server", "granian"],
            "--workers does not run --server granian",
        ),
        ([*CLUSTER, "--workers", "12", "--node-id", "x" * 61], "room for the worker suffix"),
    ],
)
def test_cluster_flags_that_do_not_fit_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        parse(*argv)
