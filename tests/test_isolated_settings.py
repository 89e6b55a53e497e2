"""The suite builds its settings from its own values, not from the caller's.

An operator's checkout may hold a ``.env`` for compose (the README tells them
to make one, with ``BSO_AUTH=required``), and their shell may export
``BSO_*`` or ``ZEUS_BSO_*`` variables. Neither may change what the suite
finds: tests/conftest.py drops those variables and keeps Settings from reading
a ``.env`` in the suite's process, and servers the suite starts run in a
folder of their own. Checked by running part of the suite in a copy of the
checkout with a hostile ``.env`` in its root and hostile variables around it:
an in-process test (the smoke test, which answered 401) and one that starts
``bso serve`` with workers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.server import REPO_ROOT

# What the suite needs to run: its code, its configuration, the service it tests.
COPIED = ("app", "migrations", "tests", "alembic.ini", "pyproject.toml")
HOSTILE = {
    "BSO_AUTH": "required",
    "BSO_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/nothing",
    "BSO_TRIAL_LEASE_S": "1",
    "BSO_LOCK_TIMEOUT_MS": "1",
    "BSO_DEFAULT_POLICY": "predictive",
    "BSO_MAX_BODY_BYTES": "1024",
    "BSO_POOL_SIZE": "1",
    "ZEUS_BSO_LOG_LEVEL": "DEBUG",
}
SELECTED = (
    "tests/api/test_smoke.py",
    "tests/test_outage.py::test_terminated_backends_answer_503_and_the_service_recovers",
)


def test_a_dotenv_in_the_checkout_and_bso_variables_around_change_nothing(
    tmp_path: Path,
) -> None:
    checkout = tmp_path / "checkout"
    for name in COPIED:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, checkout / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, checkout / name)
    (checkout / ".env").write_text(
        "".join(f"{k}={v}\n" for k, v in HOSTILE.items()) + "BSO_LOG_FORMAT=json\n"
    )
    env = {
        # Its own run: not this run's xdist worker, whose databases it would share.
        **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")},
        **HOSTILE,
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SELECTED],
        cwd=checkout, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]
