"""The examples train for real: every test here needs torch, Lightning and transformers.

They are installed only in the Python 3.11 venv (the CPU build of torch 2.13.0
on disk there), so scripts/test.sh deselects the ``examples`` marker on the
newest Python and runs these tests on 3.11 only.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.server import Server, bso_args, clean_env, free_port, running_server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/examples/" in item.nodeid:
            item.add_marker(pytest.mark.examples)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``bso serve`` on a fresh SQLite file (it migrates the embedded database itself)."""
    folder = tmp_path_factory.mktemp("examples")
    port = free_port()
    env = clean_env(
        BSO_DATABASE_URL=f"sqlite+aiosqlite:///{folder / 'bso.db'}", BSO_LOG_LEVEL="WARNING"
    )
    args = bso_args("serve", "--host", "127.0.0.1", "--port", str(port))
    with running_server(args, port=port, env=env, log_dir=folder, cwd=folder) as s:
        yield s
