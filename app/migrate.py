"""Schema migrations from code: `bso migrate`, `bso serve` and the tests use these.

The migration scripts ship inside the package (the ``migrations`` package),
so an installed service can migrate without the source tree.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import migrations

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported only when used: a serving worker needs just the head
# revision, read once, and saves the memory of keeping Alembic loaded.


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic config pointing at the packaged scripts and, if given, a URL."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["configure_logging"] = False
    if database_url is not None:
        config.attributes["database_url"] = database_url
    return config


def upgrade_head(database_url: str | None = None) -> None:
    """Upgrade the database to the latest revision (the configured one by default).

    env.py runs its own event loop; called from inside a running loop (an
    async test, say), the upgrade runs on a helper thread instead.
    """
    from alembic import command

    config = alembic_config(database_url)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            command.upgrade(config, "head")
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="alembic-upgrade")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


_REVISION = re.compile(r"^(revision|down_revision)\s*(?::[^=]*)?=\s*(.+)$", re.MULTILINE)


@lru_cache
def head_revision() -> str:
    """The newest revision this code knows, read from the scripts' own headers.

    Not through Alembic: /readyz asks this in every worker, and loading
    Alembic (with SQLAlchemy) there would cost each worker about 20 MiB.
    tests/test_migrations.py checks that this agrees with Alembic.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (Path(migrations.__file__).parent / "versions").glob("*.py"):
        for name, value in _REVISION.findall(script.read_text(encoding="utf-8")):
            found = set(re.findall(r"[\"']([0-9A-Za-z_]+)[\"']", value))
            (revisions if name == "revision" else parents).update(found)
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"expected one migration head, found {sorted(heads)}")
    return heads.pop()
