"""API tokens: their secrets, the `bso tokens` use cases, and checking one on a request.

A token reads ``bso_<token_id>_<secret>``: 12 hex digits that find its one
row by primary key, and 32 random bytes (``secrets.token_urlsafe``). The
database keeps only ``HMAC-SHA256(salt, secret)`` with a random 16-byte salt
per token, compared with ``hmac.compare_digest`` (constant time).

Why not scrypt or PBKDF2: a slow hash protects *guessable* passwords; a
256-bit random secret cannot be guessed however fast the hash is, while a
slow one would spend milliseconds of CPU on every check, which anyone sending
wrong tokens could turn into load. The salt still makes every row's hash
differ for one secret, so no table can be precomputed or matched.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from app.errors import DomainError, TokenNameTakenError, TokenNotFoundError, UnauthorizedError
from app.roles import Principal, Role
from app.store import tokens as token_rows
from app.store.engine import autocommit
from app.store.tokens import TokenRow

logger = logging.getLogger(__name__)

SCHEME = "bso"  # every token starts with "bso_"
_ID_HEX_DIGITS = 12
_TOKEN = re.compile(rf"{SCHEME}_([0-9a-f]{{{_ID_HEX_DIGITS}}})_([A-Za-z0-9_-]{{43}})")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_PREFIX = re.compile(r"[^\x00-\x1f\x7f-\x9f]{1,200}")  # as JobSpec.job_id_prefix

INVALID = (
    "The token is not valid: it names no token, or its secret does not match. "
    "Check that it was copied whole; `bso tokens create` makes a new one."
)


def secret_hash(salt: bytes, secret: str) -> bytes:
    """The stored form of a secret: HMAC-SHA256 keyed with the token's salt."""
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()


def split_token(presented: str) -> tuple[str, str] | None:
    """A presented token's id and secret; None if it does not look like one."""
    match = _TOKEN.fullmatch(presented)
    return None if match is None else (match[1], match[2])


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What `bso tokens list` shows: never the secret or its hash."""

    name: str
    token_id: str
    role: Role
    prefixes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None


def _info(row: TokenRow) -> TokenInfo:
    return TokenInfo(
        row.name, row.token_id, row.role, tuple(row.prefixes), row.created_at, row.revoked_at
    )


def _check_spec(name: str, role: Role, prefixes: tuple[str, ...]) -> None:
    if NAME.fullmatch(name) is None:
        raise DomainError(
            f"Invalid token name {name!r}: 1 to 64 letters, digits and . _ @ -, "
            "starting with a letter or digit."
        )
    if prefixes and role is not Role.TRAINER:
        raise DomainError("--prefix limits trainer tokens only; viewers and admins have none.")
    for prefix in prefixes:
        if _PREFIX.fullmatch(prefix) is None:
            raise DomainError(f"Invalid job_id_prefix {prefix!r}: 1 to 200 printable characters.")


@dataclass(frozen=True, slots=True)
class NewToken:
    info: TokenInfo
    token: str  # the whole secret token: shown once, never stored


async def create_token(
    engine: AsyncEngine, name: str, role: Role, prefixes: Iterable[str], *, now: datetime
) -> NewToken:
    """Make a token; only its salted hash is stored, the token is returned once."""
    unique = tuple(sorted(set(prefixes)))
    _check_spec(name, role, unique)
    async with engine.begin() as conn:
        while True:
            token_id = secrets.token_hex(_ID_HEX_DIGITS // 2)
            secret = secrets.token_urlsafe(32)
            salt = secrets.token_bytes(16)
            values = {
                "token_id": token_id,
                "name": name,
                "role": role.value,
                "prefixes": list(unique),
                "salt": salt.hex(),
                "secret_hash": secret_hash(salt, secret).hex(),
                "created_at": now,
                "revoked_at": None,
            }
            if await token_rows.insert_token(conn, values):
                break
            # The name, or (48 random bits) the id: tell which, or draw again.
            if (taken := await token_rows.token_by_name(conn, name)) is not None:
                state = "revoked" if taken.revoked_at is not None else "live"
                raise TokenNameTakenError(
                    f"A token named {name!r} exists ({state}); names are never reused: "
                    "choose another."
                )
    logger.info("created token %s (%s)", name, role)
    info = TokenInfo(name, token_id, role, unique, now, None)
    return NewToken(info, f"{SCHEME}_{token_id}_{secret}")


async def list_tokens(engine: AsyncEngine) -> list[TokenInfo]:
    async with autocommit(engine) as conn:
        return [_info(row) for row in await token_rows.list_tokens(conn)]


@dataclass(frozen=True, slots=True)
class Revocation:
    info: TokenInfo
    already: bool  # it had been revoked before (at info.revoked_at)


async def revoke_token(engine: AsyncEngine, name: str, *, now: datetime) -> Revocation:
    """Revoke a token by name (idempotent); every server refuses it within its cache time."""
    async with engine.begin() as conn:
        newly = await token_rows.revoke_token(conn, name, now)
        row = await token_rows.token_by_name(conn, name)
    if row is None:
        raise TokenNotFoundError(name)
    if newly:
        logger.info("revoked token %s", name)
    return Revocation(_info(row), already=not newly)


# -------------------------------------------------------- on every request


@dataclass(frozen=True, slots=True)
class _Checked:
    """A token row as read at ``read_at`` (monotonic seconds)."""

    read_at: float
    salt: bytes
    digest: bytes
    principal: Principal
    revoked: bool


class TokenVerifier:
    """Finds the caller of a presented token, one per server process.

    A row read from the database is trusted for ``ttl_s`` seconds, then read
    again: a revocation reaches every process within ``ttl_s`` (at most 4 s,
    so within 5 s on every replica), and a request costs no database round
    trip while its token's row is fresh. The secret is checked against the
    row's hash on every request, so a wrong secret never passes because a
    right one came first. Only rows that exist are kept (at most one per
    token); ``ttl_s`` = 0 reads the row on every request.
    """

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._rows: dict[str, _Checked] = {}

    async def verify(self, engine: AsyncEngine, presented: str) -> Principal:
        """The caller, or UnauthorizedError (401) for a wrong or revoked token."""
        parts = split_token(presented)
        if parts is None:
            raise UnauthorizedError(INVALID)
        token_id, secret = parts
        checked = self._rows.get(token_id)
        if checked is None or time.monotonic() - checked.read_at >= self.ttl_s:
            checked = await self._read(engine, token_id)
        if not hmac.compare_digest(secret_hash(checked.salt, secret), checked.digest):
            raise UnauthorizedError(INVALID)
        if checked.revoked:
            raise UnauthorizedError(f"Token {checked.principal.name!r} was revoked.")
        return checked.principal

    async def _read(self, engine: AsyncEngine, token_id: str) -> _Checked:
        read_at = time.monotonic()
        async with autocommit(engine) as conn:
            row = await token_rows.token_by_id(conn, token_id)
        if row is None:
            self._rows.pop(token_id, None)
            raise UnauthorizedError(INVALID)
        checked = _Checked(
            read_at,
            bytes.fromhex(row.salt),
            bytes.fromhex(row.secret_hash),
            Principal(row.name, row.role, frozenset(row.prefixes)),
            row.revoked_at is not None,
        )
        if self.ttl_s > 0:
            self._rows[token_id] = checked
        return checked
