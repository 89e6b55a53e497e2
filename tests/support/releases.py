"""The previous release's code, from git, for the rolling-upgrade check (docs/upgrades.md).

The previous release is the newest commit in HEAD's history whose migrations
stop at the revision before this checkout's newest one: the code that runs
on the old schema while a rolling upgrade replaces it. (With the newest
migration not committed yet, that is HEAD itself.) ``BSO_UPGRADE_FROM``
names another commit to check instead.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from alembic.script import ScriptDirectory

from tests.support.server import REPO_ROOT


@dataclass(frozen=True)
class Release:
    commit: str
    head: str  # its newest migration


def _git(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["git", *args], cwd=REPO_ROOT, input=stdin, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return result.stdout


def _scripts(root: Path) -> ScriptDirectory:
    return ScriptDirectory(str(root / "migrations"))


def previous_release() -> str:
    """The commit of the previous release (see the module's docstring)."""
    given = os.environ.get("BSO_UPGRADE_FROM")
    if given:
        return _git("rev-parse", "--verify", given + "^{commit}").strip()
    scripts = _scripts(REPO_ROOT)
    newest = scripts.get_revision("head")
    assert newest is not None and isinstance(newest.down_revision, str), "one head, one parent"
    before = scripts.get_revision(newest.down_revision)
    assert before is not None
    newest_path = Path(newest.path).relative_to(REPO_ROOT).as_posix()
    before_path = Path(before.path).relative_to(REPO_ROOT).as_posix()
    commits = _git("rev-list", "--topo-order", "HEAD").split()
    # One `git cat-file` for all: which commits hold which migration file.
    queries = "".join(f"{c}:{p}\n" for c in commits for p in (newest_path, before_path))
    answers = _git("cat-file", "--batch-check", stdin=queries).splitlines()
    for index, commit in enumerate(commits):
        has_newest, has_before = (not a.endswith("missing") for a in answers[2 * index :][:2])
        if has_before and not has_newest:
            return commit
    raise AssertionError(
        f"no commit in HEAD's history has {before_path} without {newest_path} "
        "(a shallow clone? fetch the history, or set BSO_UPGRADE_FROM)"
    )


def export(commit: str, into: Path) -> Release:
    """The commit's ``app`` and ``migrations`` under ``into`` (run with PYTHONPATH=into)."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "app", "migrations"],
        cwd=REPO_ROOT, capture_output=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    head = _scripts(into).get_current_head()
    assert head is not None
    return Release(commit, head)
