"""Tokens in the database: only salted hashes stored, compared in constant time,
and a revocation refused by every replica within 5 seconds."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app import tokens
from app.config import Settings
from app.http.app import create_app
from app.roles import Role
from app.service import utcnow
from app.store import tokens as token_rows
from tests.helpers import bearer, new_token


async def _rows(app: FastAPI) -> list[dict[str, Any]]:
    async with app.state.engine.connect() as conn:
        result = await conn.exec_driver_sql("SELECT * FROM token ORDER BY name")
        return [dict(row._mapping) for row in result]


async def test_only_a_salted_hash_of_each_secret_is_stored(auth_app: FastAPI) -> None:
    first = await new_token(auth_app, "a", Role.ADMIN)
    second = await new_token(auth_app, "b", Role.VIEWER)
    rows = await _rows(auth_app)
    assert [r["name"] for r in rows] == ["a", "b"]
    for token, row in zip((first, second), rows, strict=True):
        _, token_id, secret = token.split("_", 2)
        assert row["token_id"] == token_id
        for value in row.values():
            assert secret not in str(value) and token not in str(value)
        assert row["secret_hash"] != hashlib.sha256(secret.encode()).hexdigest()
        salt = bytes.fromhex(row["salt"])
        assert len(salt) == 16
        expected = hmac.new(salt, secret.encode(), hashlib.sha256).hexdigest()
        assert row["secret_hash"] == expected
    assert rows[0]["salt"] != rows[1]["salt"]


def test_tokens_identify_their_row_and_carry_256_random_bits() -> None:
    assert tokens.split_token("bso_0123456789ab_" + "A" * 43) == ("0123456789ab", "A" * 43)
    secret = "A" * 43
    wrongs = ["", "bso_", "bso_0123456789ab_short", f"xyz_0123456789ab_{secret}",
              f"bso_0123456789AB_{secret}", f"bso_0123456789ab_{secret}\n"]  # fmt: skip
    for wrong in wrongs:
        assert tokens.split_token(wrong) is None, wrong


async def test_secrets_are_compared_with_compare_digest(
    auth_app: FastAPI, auth_client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await new_token(auth_app, "ci", Role.VIEWER)
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # what app.tokens calls
    assert (await auth_client.get("/jobs", headers=bearer(token))).status_code == 200
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
    # Cached row, wrong secret: checked again, refused.
    assert (await auth_client.get("/jobs", headers=bearer(wrong))).status_code == 401
    assert len(calls) == 2
    assert all(isinstance(a, bytes) and len(a) == len(b) == 32 for a, b in calls)


@asynccontextmanager
async def replica(database_url: str, cache_s: float) -> AsyncIterator[httpx.AsyncClient]:
    """Another server process on the same database: its own engine and token cache."""
    settings = Settings(
        database_url=database_url, log_level="WARNING", auth="required", auth_cache_s=cache_s
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


async def _refused_after(http: httpx.AsyncClient, token: str, since: float) -> float:
    """Seconds from ``since`` until ``http`` answers 401 for the token (polls every 50 ms)."""
    while True:
        response = await http.get("/jobs", headers=bearer(token))
        if response.status_code == 401:
            assert "revoked" in response.json()["message"]
            return time.monotonic() - since
        assert response.status_code == 200, response.text
        assert time.monotonic() - since < 10, "never refused"
        await asyncio.sleep(0.05)


async def test_a_revoked_token_is_refused_by_every_replica_within_5_seconds(
    auth_app: FastAPI, auth_client: httpx.AsyncClient, database_url: str
) -> None:
    token = await new_token(auth_app, "ci", Role.VIEWER)
    async with replica(database_url, cache_s=4) as slowest, replica(database_url, 0) as uncached:
        for http in (auth_client, slowest, uncached):  # each has it cached now, if it caches
            assert (await http.get("/jobs", headers=bearer(token))).status_code == 200
        revoked = time.monotonic()
        await tokens.revoke_token(auth_app.state.engine, "ci", now=utcnow())
        assert await _refused_after(uncached, token, revoked) < 0.5
        delays = [await _refused_after(http, token, revoked) for http in (auth_client, slowest)]
    assert all(delay < 5 for delay in delays), delays


async def test_a_cached_token_costs_no_database_read(
    auth_app: FastAPI, auth_client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await new_token(auth_app, "ci", Role.VIEWER)
    reads: list[str] = []
    real = token_rows.token_by_id

    async def counting(conn: Any, token_id: str) -> Any:
        reads.append(token_id)
        return await real(conn, token_id)

    monkeypatch.setattr(token_rows, "token_by_id", counting)
    for _ in range(5):
        assert (await auth_client.get("/jobs", headers=bearer(token))).status_code == 200
    assert len(reads) == 1  # the default BSO_AUTH_CACHE_S is 2 s


async def test_a_token_created_while_a_server_runs_works_at_once(
    auth_app: FastAPI, auth_client: httpx.AsyncClient
) -> None:
    unknown = "bso_0123456789ab_" + "A" * 43
    assert (await auth_client.get("/jobs", headers=bearer(unknown))).status_code == 401
    token = await new_token(auth_app, "late", Role.VIEWER)  # unknown ids are never cached
    assert (await auth_client.get("/jobs", headers=bearer(token))).status_code == 200


async def test_an_unreachable_database_answers_503_not_500_when_checking_a_token() -> None:
    unreachable = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"
    settings = Settings(database_url=unreachable, log_level="CRITICAL", auth="required")
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            response = await http.get("/jobs", headers=bearer("bso_0123456789ab_" + "A" * 43))
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
