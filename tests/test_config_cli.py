"""Settings from the environment, and the ``bso`` console script."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from app.config import Settings, deprecated_settings
from app.store.migrate import head_revision
from tests.support.server import (
    bso_args,
    clean_env,
    free_port,
    running_server,
)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No BSO_/ZEUS_BSO_ variable from outside, and no .env file in the working directory.

    Settings read a .env here, as they do in a server: the suite turned that off
    for itself (tests/conftest.py), in a working directory that may hold one.
    """
    for name in list(os.environ):
        if name.startswith(("BSO_", "ZEUS_BSO_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(Settings.model_config, "env_file", ".env")
    yield


# ---------------------------------------------------------------- settings


def test_settings_have_working_defaults() -> None:
    settings = Settings()
    assert settings.database_url == "sqlite+aiosqlite:///./data/bso.db"
    assert settings.log_level == "INFO"
    assert settings.is_sqlite and settings.is_embedded_default


@pytest.mark.parametrize("prefix", ["BSO_", "ZEUS_BSO_"])
def test_settings_honour_bso_and_zeus_bso_environment_names(
    monkeypatch: pytest.MonkeyPatch, prefix: str
) -> None:
    monkeypatch.setenv(f"{prefix}DATABASE_URL", "postgresql+asyncpg://u:p@db:5432/bso")
    monkeypatch.setenv(f"{prefix}LOG_LEVEL", "debug")
    monkeypatch.setenv(f"{prefix}ECHO_SQL", "true")
    settings = Settings()
    assert settings.database_url == "postgresql+asyncpg://u:p@db:5432/bso"
    assert settings.log_level == "DEBUG"
    assert settings.echo_sql is True
    assert not settings.is_sqlite and not settings.is_embedded_default


def test_bso_names_win_over_zeus_bso_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZEUS_BSO_DATABASE_URL", "sqlite:///zeus.db")
    monkeypatch.setenv("BSO_DATABASE_URL", "sqlite:///bso.db")
    assert Settings().database_url == "sqlite+aiosqlite:///bso.db"


def test_server_settings_come_from_bso_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "HOST": "0.0.0.0",
        "PORT": "9000",
        "WORKERS": "4",
        "POOL_SIZE": "3",
        "LOCK_TIMEOUT_MS": "250",
        "MAX_BODY_BYTES": "2048",
    }.items():
        monkeypatch.setenv(f"BSO_{name}", value)
    settings = Settings()
    assert (settings.host, settings.port, settings.workers, settings.pool_size) == (
        "0.0.0.0",
        9000,
        4,
        3,
    )
    assert (settings.lock_timeout_ms, settings.max_body_bytes) == (250, 2048)


def test_auth_is_off_by_default_and_required_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (Settings().auth, Settings().auth_cache_s) == ("off", 2.0)
    monkeypatch.setenv("BSO_AUTH", " Required ")
    monkeypatch.setenv("BSO_AUTH_CACHE_S", "0")
    assert (Settings().auth, Settings().auth_cache_s) == ("required", 0.0)


def test_a_dotenv_file_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("BSO_LOG_LEVEL=ERROR\n")
    assert Settings().log_level == "ERROR"


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("postgresql://u:p@db:5432/bso", "postgresql+asyncpg://u:p@db:5432/bso"),
        ("postgres://u@db/bso", "postgresql+asyncpg://u@db/bso"),
        ("PostgreSQL://u@db/bso", "postgresql+asyncpg://u@db/bso"),
        ("postgresql+asyncpg://u@db/bso", "postgresql+asyncpg://u@db/bso"),
        ("  postgresql://u@db/bso \n", "postgresql+asyncpg://u@db/bso"),
        ("sqlite:///./data/x.db", "sqlite+aiosqlite:///./data/x.db"),
        ("sqlite+aiosqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
    ],
)
def test_database_urls_are_normalised_to_async_drivers(
    monkeypatch: pytest.MonkeyPatch, given: str, normalised: str
) -> None:
    monkeypatch.setenv("BSO_DATABASE_URL", given)
    assert Settings().database_url == normalised


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("mysql://u@db/bso", ["unsupported database 'mysql'", "PostgreSQL", "SQLite"]),
        ("mysql+aiomysql://u@db/bso", ["unsupported database 'mysql+aiomysql'"]),
        ("postgresql+psycopg2://u@db/bso", ["unsupported database 'postgresql+psycopg2'"]),
        ("oracle://u@db/bso", ["unsupported database 'oracle'"]),
        ("bso.db", ["not a database URL", "postgresql+asyncpg://"]),
        ("", ["not a database URL"]),
    ],
)
def test_unsupported_database_urls_are_rejected_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, url: str, words: list[str]
) -> None:
    monkeypatch.setenv("BSO_DATABASE_URL", url)
    with pytest.raises(ValidationError) as raised:
        Settings()
    message = str(raised.value)
    assert "database_url" in message.lower() or "DATABASE_URL" in message
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    ("given", "level"),
    [
        ("WARN", "WARNING"),
        ("warn", "WARNING"),
        (" Warning ", "WARNING"),
        ("fatal", "CRITICAL"),
        ("error", "ERROR"),
        ("DEBUG", "DEBUG"),
    ],
)
def test_log_levels_are_normalised(monkeypatch: pytest.MonkeyPatch, given: str, level: str) -> None:
    monkeypatch.setenv("BSO_LOG_LEVEL", given)
    assert Settings().log_level == level


@pytest.mark.parametrize("given", ["LOUD", "", "10", "TRACE"])
def test_an_unknown_log_level_is_rejected(monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    monkeypatch.setenv("BSO_LOG_LEVEL", given)
    with pytest.raises(ValidationError, match=r"(?i)log_level"):
        Settings()


@pytest.mark.parametrize(
    ("given", "log_format"), [("json", "json"), (" JSON ", "json"), ("Text", "text")]
)
def test_the_log_format_is_text_by_default_and_json_on_request(
    monkeypatch: pytest.MonkeyPatch, given: str, log_format: str
) -> None:
    assert Settings().log_format == "text"
    monkeypatch.setenv("BSO_LOG_FORMAT", given)
    assert Settings().log_format == log_format


def test_an_unknown_log_format_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BSO_LOG_FORMAT", "xml")
    with pytest.raises(ValidationError, match=r"(?i)log_format"):
        Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BSO_PORT", "0"),
        ("BSO_PORT", "70000"),
        ("BSO_WORKERS", "0"),
        ("BSO_POOL_SIZE", "0"),
        ("BSO_LOCK_TIMEOUT_MS", "0"),
        ("BSO_MAX_BODY_BYTES", "10"),
        ("BSO_ECHO_SQL", "perhaps"),
        ("BSO_AUTH", "on"),
        ("BSO_AUTH", "true"),
        ("BSO_AUTH_CACHE_S", "5"),  # revocation must hold within 5 s
        ("BSO_AUTH_CACHE_S", "-1"),
        ("BSO_TRIAL_LEASE_S", "-1"),
        ("BSO_MAX_HEADER_BYTES", "100"),
        ("BSO_REQUEST_TIMEOUT_S", "0"),
    ],
)
def test_out_of_range_server_settings_are_rejected(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_the_trial_lease_defaults_to_two_hours_and_zero_turns_it_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().trial_lease_s == 7200 and Settings().lease.enabled
    monkeypatch.setenv("BSO_TRIAL_LEASE_S", "0")
    assert not Settings().lease.enabled


def test_the_deprecated_trial_timeout_name_still_sets_the_lease(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BSO_TRIAL_TIMEOUT_S", "900")
    assert Settings().trial_lease_s == 900
    (warning,) = deprecated_settings(os.environ)
    assert "BSO_TRIAL_TIMEOUT_S is deprecated" in warning and "BSO_TRIAL_LEASE_S" in warning
    monkeypatch.setenv("BSO_TRIAL_LEASE_S", "1800")  # the new name wins
    assert Settings().trial_lease_s == 1800


# --------------------------------------------------------------------- CLI


def bso(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        bso_args(*args), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_bso_help_lists_every_command(tmp_path: Path) -> None:
    result = bso("--help", env=clean_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("serve", "migrate", "tokens", "simulate", "jobs", "import-zeus"):
        assert command in result.stdout, f"{command!r} missing from:\n{result.stdout}"


def test_bso_migrate_creates_the_schema_of_a_fresh_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "folder" / "bso.db"
    env = clean_env(BSO_DATABASE_URL=f"sqlite:///{path}")
    result = bso("migrate", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"Database schema upgraded from empty to {head_revision()}.\n"
    again = bso("migrate", env=env, cwd=tmp_path)
    assert again.stdout == f"Database schema already at {head_revision()}.\n"
    # closing(): a sqlite3 connection's own context manager only commits.
    with closing(sqlite3.connect(path)) as connection:
        tables = {
            r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    assert {"job", "batch_size", "trial", "arm", "alembic_version"} <= tables
    assert revision == head_revision()


def test_bso_migrate_honours_the_zeus_bso_name(tmp_path: Path) -> None:
    path = tmp_path / "zeus.db"
    result = bso("migrate", env=clean_env(ZEUS_BSO_DATABASE_URL=f"sqlite:///{path}"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert path.exists()


@pytest.mark.parametrize(
    ("command", "name", "value", "named"),
    [
        ("serve", "BSO_LOG_LEVEL", "LOUD", "LOG_LEVEL"),
        ("serve", "BSO_DATABASE_URL", "mysql://u@db/bso", "unsupported database 'mysql'"),
        ("migrate", "BSO_DATABASE_URL", "mysql://u@db/bso", "unsupported database 'mysql'"),
    ],
)
def test_bso_exits_non_zero_naming_an_invalid_setting(
    tmp_path: Path, command: str, name: str, value: str, named: str
) -> None:
    result = bso(command, env=clean_env(**{name: value}), cwd=tmp_path, timeout=20)
    assert result.returncode != 0, result.stdout
    assert "Invalid configuration" in result.stderr, result.stderr
    assert named in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "data").exists(), "nothing is created on a bad configuration"


def test_bso_serve_migrates_a_fresh_embedded_sqlite_file_and_becomes_ready(
    tmp_path: Path,
) -> None:
    path = tmp_path / "new" / "folder" / "bso.db"
    port = free_port()
    env = clean_env(BSO_DATABASE_URL=f"sqlite:///{path}", BSO_LOG_LEVEL="WARNING")
    with running_server(
        bso_args("serve", "--port", str(port)),
        port=port,
        env=env,
        log_dir=tmp_path,
        cwd=tmp_path,
        ready_path="/readyz",
    ) as server:
        ready = httpx.get(server.base_url + "/readyz")
        assert ready.json() == {"status": "ok", "detail": f"schema at {head_revision()}"}
        jobs = httpx.get(server.base_url + "/jobs")
        assert jobs.status_code == 200 and jobs.json()["items"] == []
    assert path.exists()
    assert server.process.returncode is not None
