"""Every Python package of the project ships in a non-editable install."""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]


def test_every_subpackage_is_in_the_distribution() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = set(find_packages(str(ROOT), include=config["packages"]["find"]["include"]))
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("crdt_sync", "rooms", "persistence")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert on_disk <= shipped, sorted(on_disk - shipped)
    assert {"persistence.sqlite", "persistence.postgres", "crdt_sync.auth"} <= shipped
