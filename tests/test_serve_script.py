"""``./scripts/serve`` on a machine whose python3 lacks trustme, as the README's newcomer meets it.

The checkout is a temporary folder holding the script and the package; its ``python3`` is a shim
on PATH that cannot import trustme, and its ``.venv/bin/python`` the suite's own interpreter
(which has it), as the script leaves it after installing trustme on first use.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# python3 without trustme: `-c CODE` and `-m MODULE` are all the script runs.
SHIM = f"""#!{sys.executable}
import runpy, sys
sys.modules.update(trustme=None, cryptography=None)
flag, value, *rest = sys.argv[1:]
sys.argv = [value, *rest]
if flag == "-c":
    exec(compile(value, "<string>", "exec"))
else:
    runpy.run_module(value, run_name="__main__", alter_sys=True)
"""


def checkout(tmp_path: Path, venv: bool) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "serve", root / "scripts" / "serve")
    (root / "proxy").symlink_to(ROOT / "proxy")
    if venv:
        (root / ".venv" / "bin").mkdir(parents=True)
        (root / ".venv" / "bin" / "python").symlink_to(sys.executable)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(SHIM)
    (bin_dir / "python3").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FWDPROXY_")}
    return root, {**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"}


def serve_startup(root: Path, env: dict[str, str], *args: str) -> tuple[int | None, str]:
    """The script's stderr up to its listening line (then stopped), or all of it if it exits."""
    proc = subprocess.Popen([str(root / "scripts" / "serve"), "--port", "0", *args], cwd=root, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "listening on" in line:
            proc.terminate()
            break
    proc.communicate(timeout=20)
    return (None if "listening on" in lines[-1:][0] else proc.returncode), "".join(lines)


def test_a_config_file_that_intercepts_runs_on_the_venv_with_trustme(tmp_path: Path) -> None:
    root, env = checkout(tmp_path, venv=True)
    config = tmp_path / "fwdproxy.toml"
    config.write_text(f'intercept = true\nca-dir = "{tmp_path / "ca"}"\n')
    status, err = serve_startup(root, env, "--config", str(config))
    assert status is None and "created a CA" in err, err
    # Negative control: the same python3 alone cannot intercept, and says why.
    alone = subprocess.run(["python3", "-m", "proxy", "--port", "0", "--config", str(config)], cwd=root, env=env,
                           capture_output=True, text=True, timeout=20)
    assert alone.returncode == 2 and "needs trustme" in alone.stderr


def test_plain_serving_needs_no_venv(tmp_path: Path) -> None:
    root, env = checkout(tmp_path, venv=False)
    status, err = serve_startup(root, env)
    assert status is None and "installing" not in err and not (root / ".venv").exists(), err
