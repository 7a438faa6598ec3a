"""The wings import one way, and the check says so when someone breaks it.

The contracts live in pyproject.toml (``[tool.importlinter]``) and are run by
import-linter, as ``lint-imports`` would. The negative cases copy the package
into a temporary folder, add one forbidden import, and run the same contracts
there: each must break, naming the import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_an_untouched_copy_keeps_them_too(tmp_path: Path) -> None:
    # The control for the cases below: the copy itself is not what breaks them.
    result = lint(copy_of_the_package(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("module", "line", "complaint"), [
    ("client/rules.py", "from ..server import policy", "proxy.client is not allowed to import proxy.server"),
    ("server/pool.py", "from ..client import rules", "proxy.server is not allowed to import proxy.client"),
    ("http1/target.py", "from ..record import flows", "proxy.http1 is not allowed to import proxy.record"),
    ("record/flows.py", "from ..server import watchdog", "proxy.record is not allowed to import proxy.server"),
    ("server/handler.py", "from ..testing import origins", "proxy.server is not allowed to import proxy.testing"),
    ("testing/origins.py", "from .. import cli", "proxy.testing is not allowed to import proxy.cli"),
    ("config.py", "from .server import policy", "proxy.config is not allowed to import proxy.server"),
    # A cycle inside one wing: chunked already imports headers.
    ("http1/headers.py", "from . import chunked", "no import cycles"),
    # A cycle through a TYPE_CHECKING import counts: the type checker follows it.
    ("server/shared.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .listener import ProxyServer",
     "no import cycles"),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path: Path, module: str, line: str, complaint: str) -> None:
    root = copy_of_the_package(tmp_path)
    path = root / "proxy" / module
    path.write_text(f"{path.read_text()}\n{line}  # noqa\n")
    result = lint(root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert complaint in result.stdout
    assert "BROKEN" in result.stdout


def test_a_new_top_level_module_must_find_its_layer(tmp_path: Path) -> None:
    root = copy_of_the_package(tmp_path)
    (root / "proxy" / "stray.py").write_text('"""A module in no wing."""\n')
    result = lint(root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "proxy.stray" in result.stdout
