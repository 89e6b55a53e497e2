"""An in-memory SQLite database: one shared connection, migrated by the app itself."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from app.config import Settings
from app.http.app import create_app
from tests.helpers import dispatch, finish, spec
from tests.support.server import bso_args, clean_env


@pytest.mark.parametrize("url", ["sqlite+aiosqlite://", "sqlite:///:memory:"])
async def test_an_in_memory_database_serves_concurrent_requests(url: str) -> None:
    application = create_app(Settings(database_url=url, log_level="WARNING"))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            assert (await http.get("/readyz")).status_code == 200
            created = await asyncio.gather(
                *(http.post("/jobs", json=spec(job_id=f"job-{i}")) for i in range(8))
            )
            assert [r.status_code for r in created] == [201] * 8
            trials = await asyncio.gather(*(dispatch(http, f"job-{i}") for i in range(8)))
            await asyncio.gather(*(finish(http, t, cost_time=1.0) for t in trials))
            page = (await http.get("/jobs")).json()
            assert len(page["items"]) == 8
            assert all(j["min_cost"] is not None for j in page["items"])
            assert (await http.get("/jobs/job-0/trials")).json()["items"][0]["status"] == (
                "Succeeded"
            )


def test_an_in_memory_database_cannot_be_shared_by_workers(tmp_path: Path) -> None:
    env = clean_env(BSO_DATABASE_URL="sqlite+aiosqlite://")
    result = subprocess.run(
        bso_args("serve", "--workers", "2"), env=env, cwd=tmp_path, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "one worker" in result.stderr
    migrate = subprocess.run(
        bso_args("migrate"), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert migrate.returncode == 2 and "in-memory" in migrate.stderr


def test_an_in_memory_database_cannot_require_tokens() -> None:
    with pytest.raises(ValidationError, match="in-memory"):
        Settings(database_url="sqlite+aiosqlite://", auth="required")
