"""Every Python package of the project, and the web pages, ship in a non-editable
install (a built wheel is installed and served in tests/integration/test_wheel.py)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_subpackage_is_in_the_distribution() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = set(config["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("crdt_sync", "rooms", "persistence")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert on_disk <= shipped, sorted(on_disk - shipped)
    assert {"persistence.sqlite", "persistence.postgres", "crdt_sync.auth"} <= shipped


def test_the_web_pages_ship_inside_the_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "crdt_sync.web" in config["packages"]
    assert config["package-dir"]["crdt_sync.web"] == "web"
    assert config["package-data"]["crdt_sync.web"] == ["**/*"]
