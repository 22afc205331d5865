"""A built wheel, installed in a fresh venv (not editable), serves every page.

``web/`` ships inside the package as ``crdt_sync/web`` (``pyproject.toml``): this
builds the wheel from the working tree, installs it with its dependencies in a new
virtualenv, starts that venv's server and fetches every page and every file the pages
load (scripts, stylesheets, ES module imports), following the redirects of ``/``,
``/board`` and ``/inspect``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from tests.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("/", "/?doc=note/wheel", "/board", "/inspect", "/web/board.html", "/web/inspect.html")
#: What a page or module loads: src/href attributes, and ES module imports.
LOADS = re.compile(
    r"""(?:src|href)\s*=\s*["']([^"'#]+)["']"""
    r"""|(?:import|export)\s[^'"]*?from\s*["']([^"']+)["']"""
    r"""|import\s*\(\s*["']([^"']+)["']\s*\)"""
    r"""|^\s*import\s*["']([^"']+)["']""",
    re.MULTILINE,
)

pytestmark = pytest.mark.slow


def run(*cmd: str | Path, cwd: Path | None = None, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{cmd}: {done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    dist = work / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, ROOT)
    [wheel] = dist.glob("crdt_sync-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "crdt_sync/web/index.html" in names and "crdt_sync/web/board.html" in names
    assert not [n for n in names if "node_modules" in n], "node_modules must not ship"
    venv = work / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel)
    where = run(python, "-c", "import crdt_sync; print(crdt_sync.__file__)", cwd=work)
    assert where.strip().startswith(str(venv)), where  # the wheel, not this checkout
    return python


def loads_of(text: str) -> list[str]:
    found = []
    for match in LOADS.finditer(text):
        ref = next(g for g in match.groups() if g)
        if not ref.startswith(("data:", "mailto:", "javascript:")):
            found.append(ref)
    return found


def test_the_installed_wheel_serves_every_page_and_what_it_loads(
    wheel_venv: Path, tmp_path: Path
) -> None:
    server = ServerProcess(tmp_path, python=str(wheel_venv)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10, follow_redirects=True) as http:
            seen: set[str] = set()
            todo = [server.url + page for page in PAGES]
            while todo:
                url = todo.pop()
                if url in seen:
                    continue
                seen.add(url)
                response = http.get(url)
                assert response.status_code == 200, (url, response.status_code)
                kind = response.headers["content-type"]
                if not kind.startswith(("text/html", "text/javascript", "application/javascript")):
                    continue
                for ref in loads_of(response.text):
                    target = urljoin(str(response.url), ref)
                    if urlsplit(target).netloc != urlsplit(server.url).netloc:
                        pytest.fail(f"{response.url} loads {ref} from another host")
                    if urlsplit(target).path.startswith("/web/") or ref.startswith("."):
                        todo.append(target)
            scripts = [u for u in seen if u.endswith(".js")]
            assert any(u.endswith("/web/board.js") for u in scripts), sorted(seen)
            assert any(u.endswith("/web/inspect.js") for u in scripts), sorted(seen)
    finally:
        server.stop()
