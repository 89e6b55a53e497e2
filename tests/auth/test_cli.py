"""`bso tokens create/list/revoke` through the installed console script, on both databases."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from pathlib import Path

import httpx
from fastapi import FastAPI

from tests.helpers import bearer, spec
from tests.support.server import bso_args, clean_env

TOKEN = re.compile(r"bso_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")


async def bso(database_url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        bso_args("tokens", *args),
        env=clean_env(BSO_DATABASE_URL=database_url),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_create_list_and_revoke_a_token_from_the_command_line(
    auth_app: FastAPI, auth_client: httpx.AsyncClient, database_url: str, tmp_path: Path
) -> None:
    created = await bso(database_url, tmp_path, "create", "team-a", "--role", "trainer",
                        "--prefix", "job", "--prefix", "job2")  # fmt: skip
    assert created.returncode == 0, created.stderr
    token = created.stdout.splitlines()[-1]
    assert TOKEN.fullmatch(token), created.stdout
    assert "team-a" in created.stderr and "job, job2" in created.stderr

    assert (await auth_client.post("/jobs", json=spec(), headers=bearer(token))).status_code == 201
    other = spec(job_id="other-1", job_id_prefix="other")
    assert (await auth_client.post("/jobs", json=other, headers=bearer(token))).status_code == 403

    again = await bso(database_url, tmp_path, "create", "team-a", "--role", "viewer")
    assert again.returncode == 1 and "exists" in again.stderr and not again.stdout

    listed = await bso(database_url, tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "ROLE", "PREFIXES", "CREATED", "REVOKED"]
    name, role, prefixes, created_at, revoked_at = row.split()
    assert (name, role, prefixes, revoked_at) == ("team-a", "trainer", "job,job2", "-")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created_at)
    async with auth_app.state.engine.connect() as conn:
        stored = (await conn.exec_driver_sql("SELECT salt, secret_hash FROM token")).one()
    for secret in (token, token.split("_", 2)[2], *stored):
        assert secret not in listed.stdout

    revoked = await bso(database_url, tmp_path, "revoke", "team-a")
    assert revoked.returncode == 0 and "Revoked token 'team-a'" in revoked.stdout
    since = time.monotonic()
    while (await auth_client.get("/jobs", headers=bearer(token))).status_code != 401:
        assert time.monotonic() - since < 5, "still accepted 5 s after bso tokens revoke"
        await asyncio.sleep(0.1)
    listed = await bso(database_url, tmp_path, "list")
    assert listed.stdout.splitlines()[1].split()[-1] != "-"

    unknown = await bso(database_url, tmp_path, "revoke", "nobody")
    assert unknown.returncode == 1 and "No token is named 'nobody'" in unknown.stderr


async def test_the_command_line_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    result = await bso(f"sqlite:///{empty}", tmp_path, "create", "x", "--role", "admin")
    assert result.returncode == 2 and "bso migrate" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not result.stdout
    missing = await bso(f"sqlite:///{tmp_path / 'nope.db'}", tmp_path, "list")
    assert missing.returncode == 2 and "No database at" in missing.stderr
    assert not (tmp_path / "nope.db").exists()
