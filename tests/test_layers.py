"""The wings import one way, and the check says so when someone breaks it.

The contracts live in pyproject.toml (``[tool.importlinter]``) and are run by
import-linter, as ``lint-imports`` would. The negative cases copy the package
into a temporary folder, add forbidden imports, and run the same contracts
there: each import must be named as breaking them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Runs in the working directory, which comes first on sys.path: that copy of ``proxy`` is the one checked.
LINT = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, env=env, capture_output=True,
                          text=True, timeout=60)


def copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO / "proxy", tmp_path / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_wings_keep_their_contracts() -> None:
    result = lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


# Each added line breaks the contracts in its own way; one run over one copy checks them all.
FORBIDDEN = [
    ("client/rules.py", "from ..server import policy", "proxy.client is not allowed to import proxy.server"),
    ("server/pool.py", "from ..client import rules", "proxy.server is not allowed to import proxy.client"),
    ("http1/target.py", "from ..record import flows", "proxy.http1 is not allowed to import proxy.record"),
    ("record/flows.py", "from ..server import watchdog", "proxy.record is not allowed to import proxy.server"),
    ("server/handler.py", "from ..testing import origins", "proxy.server is not allowed to import proxy.testing"),
    ("testing/origins.py", "from .. import cli", "proxy.testing is not allowed to import proxy.cli"),
    ("config.py", "from .server import policy", "proxy.config is not allowed to import proxy.server"),
    # A cycle inside one wing: chunked already imports headers.
    ("http1/headers.py", "from . import chunked", "- .headers -> .chunked (1 import)"),
    # A cycle through a TYPE_CHECKING import counts: the type checker follows it.
    ("server/shared.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .listener import ProxyServer",
     "- .shared -> .listener (1 import)"),
]


def test_forbidden_imports_break_the_contracts(tmp_path: Path) -> None:
    root = copy_of_the_package(tmp_path)
    for module, line, _ in FORBIDDEN:
        path = root / "proxy" / module
        path.write_text(f"{path.read_text()}\n{line}  # noqa\n")
    (root / "proxy" / "stray.py").write_text('"""A module in no wing."""\n')
    result = lint(root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 kept, 2 broken" in result.stdout
    missing = [complaint for _, _, complaint in FORBIDDEN if complaint not in result.stdout]
    assert not missing, result.stdout
    assert "proxy.stray" in result.stdout  # a top-level module must find its layer


def test_the_public_names_survive_the_move() -> None:
    code = ("import proxy, proxy.client, proxy.testing.pytest_plugin as plugin\n"
            "missing = [n for n in proxy.__all__ if getattr(proxy, n, None) is None]\n"
            "assert not missing, missing\n"
            "assert proxy.client.ProxyClient is proxy.ProxyClient\n"
            "assert plugin.FwdProxy and plugin.Origin\n"
            "print(len(proxy.__all__))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 14  # the thirteen exports and __version__
