"""Settings from the environment, validated once at start-up.

Our names are ``BSO_*``; the Zeus server's ``ZEUS_BSO_*`` names are honoured
too, so a Zeus deployment switches by changing only the image.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property, lru_cache
from typing import Annotated, Literal

from pydantic import AliasChoices, BeforeValidator, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.bandit.lease import Lease
from app.bandit.types import Policy

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
AuthMode = Literal["off", "required"]
LogFormat = Literal["text", "json"]

_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL"}


def _normalise_level(value: object) -> object:
    if isinstance(value, str):
        upper = value.strip().upper()
        return _LEVEL_ALIASES.get(upper, upper)
    return value


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def normalise_database_url(url: str) -> str:
    """Pick the async driver for bare URLs; refuse databases we do not support."""
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(
            f"not a database URL: {url!r}; expected e.g. "
            "postgresql+asyncpg://user:password@host:5432/db or sqlite+aiosqlite:///./data/bso.db"
        )
    scheme = scheme.lower()
    if scheme in {"postgres", "postgresql", "postgresql+asyncpg"}:
        return f"postgresql+asyncpg://{rest}"
    if scheme in {"sqlite", "sqlite+aiosqlite"}:
        return f"sqlite+aiosqlite://{rest}"
    raise ValueError(
        f"unsupported database {scheme!r}: use PostgreSQL (postgresql+asyncpg://...) "
        "or SQLite (sqlite+aiosqlite:///path)"
    )


class Settings(BaseSettings):
    """Service configuration; see the table in docs/configuration.md."""

    model_config = SettingsConfigDict(env_prefix="BSO_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default="sqlite+aiosqlite:///./data/bso.db",
        validation_alias=AliasChoices("BSO_DATABASE_URL", "ZEUS_BSO_DATABASE_URL", "database_url"),
    )
    log_level: Annotated[LogLevel, BeforeValidator(_normalise_level)] = Field(
        default="INFO",
        validation_alias=AliasChoices("BSO_LOG_LEVEL", "ZEUS_BSO_LOG_LEVEL", "log_level"),
    )
    log_format: Annotated[LogFormat, BeforeValidator(_lower)] = Field(
        default="text",
        description="text: one human-readable line per event; json: one JSON object per "
        "line, uvicorn's lines included (for log collectors).",
    )
    echo_sql: bool = Field(
        default=False,
        validation_alias=AliasChoices("BSO_ECHO_SQL", "ZEUS_BSO_ECHO_SQL", "echo_sql"),
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    pool_size: int = Field(default=10, ge=1, le=1000)
    lock_timeout_ms: int = Field(
        default=10_000,
        ge=1,
        description="How long a request waits for another request's lock on the same job "
        "(PostgreSQL lock_timeout, SQLite busy timeout) before answering 503.",
    )
    max_body_bytes: int = Field(default=65_536, ge=1024)
    trial_lease_s: int = Field(
        default=7200,
        ge=0,
        le=10 * 365 * 86400,
        # BSO_TRIAL_TIMEOUT_S: the deprecated name (see deprecated_settings).
        validation_alias=AliasChoices("BSO_TRIAL_LEASE_S", "BSO_TRIAL_TIMEOUT_S", "trial_lease_s"),
        description="Seconds a Dispatched trial may go without a dispatch or report before "
        "it is marked Failed (its client died without ending it) and, if an exploration, "
        "explored again. 0: trials never expire.",
    )
    default_policy: Annotated[Policy, BeforeValidator(_lower)] = Field(
        default=Policy.ZEUS,
        description="The policy of a job registered without one (every Zeus client): zeus "
        "(the paper's algorithm) or predictive. Read when a job is created; a job keeps "
        "the policy it was created with.",
    )
    group_by_prefix: bool = Field(
        default=False,
        description="A job registered without a group joins the job group named by its "
        "job_id_prefix (docs/SPEC.md section 12), so that unchanged Zeus clients share what "
        "each batch size needs to converge across GPU types. Read when a job is created.",
    )
    max_header_bytes: int = Field(
        default=16_384,
        ge=1024,
        le=1 << 24,
        description="Largest request line plus headers; larger ones are answered 431.",
    )
    request_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds a client may take from opening a connection (or starting its "
        "next request) to sending the whole request; then it is answered 408 and closed.",
    )
    shutdown_timeout_s: int = Field(
        default=20,
        ge=1,
        le=3600,
        description="Seconds `bso serve` waits after SIGTERM for the requests it has received "
        "to be answered, then cancels them and exits. A Kubernetes pod's "
        "terminationGracePeriodSeconds should exceed it plus the preStop delay.",
    )

    # Off by default, so that a Zeus deployment switches by changing only the
    # image; docker-compose.yml turns it on.
    auth: Annotated[AuthMode, BeforeValidator(_lower)] = Field(
        default="off",
        description="off: anyone may call anything (as the Zeus server). required: every "
        "call but the probes and docs needs a token (bso tokens create).",
    )
    auth_cache_s: float = Field(
        default=2.0,
        ge=0,
        le=4,
        description="Seconds a server process trusts a token it has checked before reading "
        "its row again: a revoked token is refused within this long (at most 4, so that "
        "revocation holds within 5 s). 0 reads the row on every request.",
    )

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        return normalise_database_url(value)

    @model_validator(mode="after")
    def _in_memory_limits(self) -> Settings:
        if self.is_in_memory and self.workers > 1:
            raise ValueError(
                "an in-memory SQLite database lives in one process: use BSO_WORKERS=1, "
                "or a database file (sqlite+aiosqlite:///./data/bso.db)"
            )
        if self.is_in_memory and self.auth == "required":
            raise ValueError(
                "BSO_AUTH=required needs tokens that `bso tokens create` can store, which an "
                "in-memory database (private to the server process) cannot take: use a file"
            )
        return self

    @cached_property
    def lease(self) -> Lease:
        """The trial lease, built once: every dispatch and report reads it."""
        return Lease(self.trial_lease_s)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def sqlite_path(self) -> str:
        """The file of a SQLite URL: sqlite+aiosqlite:///./data/bso.db -> ./data/bso.db."""
        path = self.database_url.split("://", 1)[1]
        path = path[1:] if path.startswith("/") else path  # the empty host
        return path.split("?", 1)[0] or ":memory:"

    @property
    def is_in_memory(self) -> bool:
        """An in-memory SQLite database: it lives and dies with the process."""
        return self.is_sqlite and self.sqlite_path == ":memory:"

    @property
    def is_embedded_default(self) -> bool:
        """The laptop default: a local SQLite file the service may migrate itself."""
        return self.is_sqlite


DEPRECATED_NAMES = {
    "BSO_TRIAL_TIMEOUT_S": "BSO_TRIAL_LEASE_S (a lease renewed by every report, for every "
    "trial type; the old name still sets it)",
}


def deprecated_settings(environ: Mapping[str, str]) -> list[str]:
    """Warnings for deprecated setting names found in ``environ``."""
    return [
        f"{name} is deprecated: use {instead}"
        for name, instead in DEPRECATED_NAMES.items()
        if name in environ
    ]


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
