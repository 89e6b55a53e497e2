"""scripts/test.sh refuses to run without Python 3.11 rather than leave tests out.

The training examples and the Zeus 0.16 server need Python 3.11; a run
without it used to deselect the examples with one line of output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import ONCE

ROOT = Path(__file__).resolve().parents[1]


def test_a_missing_python_3_11_fails_the_script_with_a_message(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # a PATH with the shell's tools and no Python at all
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "sort", "cat", "env"):
        found = shutil.which(tool)
        assert found is not None, tool
        (bin_dir / tool).symlink_to(found)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "PYENV_ROOT": str(tmp_path / "pyenv")}
    env |= {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL")}
    run = subprocess.run(
        [str(bin_dir / "bash"), str(ROOT / "scripts" / "test.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert run.returncode != 0, run.stdout
    assert "error: no Python 3.11 here" in run.stderr, run.stderr
    assert "Python environments" not in run.stdout, "went on without Python 3.11"


def test_every_module_marked_once_exists_and_says_why() -> None:
    """A renamed module would silently run on one Python no more: its entry must follow it."""
    for path, why in ONCE.items():
        assert (ROOT / path).is_file(), f"ONCE names {path}, which is not a file"
        assert why.strip(), path
