"""Schemathesis against the ASGI app in process: no 5xx, and every answer as documented.

For each operation of /openapi.json, Schemathesis sends the schema's examples,
its coverage cases (boundary values, each constraint broken in turn, methods
the path does not serve) and random valid and invalid requests, on both
databases, and runs the checks below on every response. Bounded and seeded,
so that a run is repeatable and takes well under a minute on two cores.

Authentication is enforced (BSO_AUTH=required) and every request carries an
admin token, so that every operation is reachable; ``ignored_auth`` checks
that every operation declaring a security scheme refuses requests without
valid credentials.
"""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.case import Case
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema
from sqlalchemy import delete

from app import tokens
from app.config import Settings
from app.http.app import create_app
from app.roles import Role
from app.schemas import JOB_SPEC_EXAMPLE
from app.service import utcnow
from app.store import tokens as token_rows
from app.store.engine import create_engine
from app.store.tables import job

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    unsupported_method,
    ignored_auth,
    # Beyond the required ones: the Allow header of a 405 lists the path's methods.
    allow_header_conformance,
]
MAX_EXAMPLES = 60  # per operation and phase: about 1,300 requests per database
EXAMPLE_JOB = str(JOB_SPEC_EXAMPLE["job_id"])

CONFIG: dict[str, Any] = {
    "seed": 20231,
    "generation": {
        "max-examples": MAX_EXAMPLES,
        "mode": "all",  # valid and invalid requests
        "deterministic": True,
        "database": "none",  # no .hypothesis folder
    },
}


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def api_settings(request: pytest.FixtureRequest) -> Settings:
    """The app's settings: a migrated database of each kind, tokens required."""
    url = str(request.getfixturevalue(f"{request.param}_url"))
    return Settings(database_url=url, log_level="CRITICAL", auth="required")


_TOKENS: dict[str, str] = {}  # database URL -> an admin token in it


async def _admin_token(settings: Settings) -> str:
    """The admin token made for this database, made (again) when its row is gone.

    Other tests empty the token table of the shared databases between theirs.
    """
    engine = create_engine(settings)
    try:
        known = _TOKENS.get(settings.database_url)
        if known is not None:
            async with engine.connect() as conn:
                if await token_rows.token_by_id(conn, known.split("_")[1]) is not None:
                    return known
        name = f"schemathesis-{uuid.uuid4().hex[:8]}"
        made = await tokens.create_token(engine, name, Role.ADMIN, [], now=utcnow())
        _TOKENS[settings.database_url] = made.token
        return made.token
    finally:
        await engine.dispose()


@pytest.fixture
def auth_headers(api_settings: Settings) -> dict[str, str]:
    """An admin's credentials, sent with every request."""
    with ThreadPoolExecutor(1) as pool:  # its own event loop, whatever runs in this one
        token = pool.submit(asyncio.run, _admin_token(api_settings)).result()
    return {"Authorization": f"Bearer {token}"}


async def _forget_example_job(settings: Settings) -> None:
    engine = create_engine(settings)
    try:
        async with engine.begin() as conn:
            await conn.execute(delete(job).where(job.c.job_id == EXAMPLE_JOB))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def api_schema(api_settings: Settings) -> OpenApiSchema:
    with ThreadPoolExecutor(1) as pool:  # its own event loop, whatever runs in this one
        pool.submit(asyncio.run, _forget_example_job(api_settings)).result()
    # Schemathesis runs the app, lifespan included, on an event loop of its own.
    application = create_app(api_settings)
    config = SchemathesisConfig.from_dict(CONFIG)
    return schemathesis.openapi.from_asgi("/openapi.json", application, config=config)


def _ensure_example_job(case: Case[Any], headers: dict[str, str]) -> None:
    """The schema's example job, with trial 1 dispatched, so that examples reach real rows.

    DELETE /jobs deletes it (its example names it), and Schemathesis orders
    that before the reads: registered again, through the app Schemathesis runs.
    """
    with asgi.get_client(case.operation.app) as client:
        registered = client.post("/jobs", json=JOB_SPEC_EXAMPLE, headers=headers)
        assert registered.status_code in (200, 201), registered.text
        if registered.status_code == 201:
            params = {"job_id": EXAMPLE_JOB}
            dispatched = client.get("/jobs/batch_size", params=params, headers=headers)
            assert dispatched.status_code == 200, dispatched.text


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_the_api_answers_as_documented_and_never_with_5xx(
    case: Case[Any], auth_headers: dict[str, str]
) -> None:
    _ensure_example_job(case, auth_headers)
    case.call_and_validate(headers=auth_headers, checks=CHECKS)
