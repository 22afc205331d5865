"""The committed ``web/vendor/yjs-bundle.js`` is exactly what its recipe builds.

The pages are served as committed (no node at serve time), so a bundle that no
longer matches ``web/package.json`` + ``web/package-lock.json`` + ``web/src/`` +
``web/build.mjs`` would ship code nobody can rebuild. The test builds the recipe
into a temporary file and byte-compares. It reuses ``web/node_modules`` when that
holds exactly the locked versions (``scripts/test`` runs ``npm ci --prefix web``);
otherwise it copies the recipe into a temporary folder and runs ``npm ci`` there.
It skips only when ``node`` or ``npm`` is not installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
BUNDLE = WEB / "vendor" / "yjs-bundle.js"
RECIPE = ("package.json", "package-lock.json", "build.mjs", "src")
REBUILD_HINT = "run `npm ci --prefix web && npm run build --prefix web` and commit web/vendor/"
#: The Yjs packages the interop tests pin too: the page and the tests use one version.
SHARED_WITH_TESTS = ("yjs", "y-websocket", "y-protocols", "lib0")


def lock() -> dict:
    return json.loads((WEB / "package-lock.json").read_text())


def installed_matches_lock(node_modules: Path) -> bool:
    """True when ``node_modules`` holds every locked package at its locked version."""
    for path, entry in lock()["packages"].items():
        if not path.startswith("node_modules/"):
            continue
        manifest = node_modules.parent / path / "package.json"
        if not manifest.is_file():
            if entry.get("optional"):
                continue  # another platform's esbuild binary
            return False
        if json.loads(manifest.read_text()).get("version") != entry["version"]:
            return False
    return True


def run(cmd: list[str], cwd: Path) -> None:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        output = result.stdout + result.stderr
        pytest.fail(f"{' '.join(cmd)} failed ({result.returncode}):\n{output}")


def first_difference(a: bytes, b: bytes) -> int:
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return min(len(a), len(b))


def test_committed_bundle_is_what_the_recipe_builds(tmp_path: Path) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node/npm not installed: cannot rebuild web/vendor/yjs-bundle.js to compare")
    out = tmp_path / "yjs-bundle.js"
    if installed_matches_lock(WEB / "node_modules"):
        run([node, str(WEB / "build.mjs"), str(out)], cwd=WEB)
    else:
        work = tmp_path / "web"
        work.mkdir()
        for name in RECIPE:
            source = WEB / name
            if source.is_dir():
                shutil.copytree(source, work / name)
            else:
                shutil.copy2(source, work / name)
        run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=work)
        run([node, str(work / "build.mjs"), str(out)], cwd=work)

    built, committed = out.read_bytes(), BUNDLE.read_bytes()
    assert built == committed, (
        f"web/vendor/yjs-bundle.js is stale ({len(committed)} bytes committed, {len(built)} "
        f"built, first difference at byte {first_difference(built, committed)}): {REBUILD_HINT}"
    )


def test_recipe_pins_exact_versions_shared_with_the_interop_tests() -> None:
    manifest = json.loads((WEB / "package.json").read_text())
    pins = {**manifest["dependencies"], **manifest["devDependencies"]}
    loose = {name: spec for name, spec in pins.items() if not re.fullmatch(r"\d+\.\d+\.\d+", spec)}
    assert loose == {}, "web/package.json pins exact versions only"

    tests_pins = json.loads((ROOT / "tests" / "package.json").read_text())["dependencies"]
    for name in SHARED_WITH_TESTS:
        assert pins[name] == tests_pins[name], f"{name}: web/ and tests/ must pin the same version"

    packages = lock()["packages"]
    for name, version in pins.items():
        locked = packages[f"node_modules/{name}"]["version"]
        assert locked == version, f"web/package-lock.json out of date for {name}"
    # One copy of Yjs (and of lib0, whose module state Yjs relies on): nothing nested.
    for name in ("yjs", "lib0", "@codemirror/state", "@codemirror/view"):
        copies = [path for path in packages if path.endswith(f"node_modules/{name}")]
        assert copies == [f"node_modules/{name}"], f"more than one copy of {name}: {copies}"
