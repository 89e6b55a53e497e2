"""How a token is presented: Bearer, Basic (as Zeus's URL credentials and browsers send it).

Also: BSO_AUTH=off ignores credentials, the dashboard asks browsers for
them, and the OpenAPI document declares the schemes and refusals.
"""

from __future__ import annotations

import base64

import httpx
import pytest
from fastapi import FastAPI

from app.errors import UnauthorizedError
from app.http.auth import MALFORMED, MISSING, presented_token
from app.roles import Role
from tests.helpers import basic, bearer, new_token, register, spec

CHALLENGE = 'Bearer, Basic realm="bso"'


def _basic_raw(decoded: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(decoded).decode()}


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer bso_x", "bso_x"),
        ("bearer   bso_x  ", "bso_x"),
        ("BEARER bso_x", "bso_x"),
        ("Basic " + base64.b64encode(b"trainer:bso_x").decode(), "bso_x"),
        ("Basic " + base64.b64encode(b"anyone at all:bso_x").decode(), "bso_x"),
        ("basic " + base64.b64encode(b":bso_x").decode(), "bso_x"),
        # curl -u "$TOKEN:": the token as the user name, no password
        ("Basic " + base64.b64encode(b"bso_x:").decode(), "bso_x"),
    ],
)
def test_a_token_is_read_from_bearer_or_basic(header: str, token: str) -> None:
    assert presented_token(header) == token


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, MISSING),
        ("", MISSING),
        ("   ", MISSING),
        ("Bearer", MALFORMED),
        ("Bearer ", MALFORMED),
        ("Token bso_x", MALFORMED),
        ("Digest username=x", MALFORMED),
        ("Basic !!!not-base64!!!", MALFORMED),
        ("Basic " + base64.b64encode(b"no colon").decode(), MALFORMED),
        ("Basic " + base64.b64encode(b":").decode(), MALFORMED),
        ("Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(), MALFORMED),
    ],
)
def test_missing_or_malformed_credentials_are_refused(header: str | None, message: str) -> None:
    with pytest.raises(UnauthorizedError) as refused:
        presented_token(header)
    assert refused.value.message == message


async def test_bearer_and_basic_with_any_user_name_are_accepted(
    auth_app: FastAPI, auth_client: httpx.AsyncClient
) -> None:
    token = await new_token(auth_app, "ci", Role.TRAINER)
    for headers in (bearer(token), basic(token), basic(token, user="x"), basic(token, user="")):
        response = await auth_client.post("/jobs", json=spec(), headers=headers)
        assert response.status_code in (200, 201), response.text
    # httpx turns URL credentials into Basic auth: what the Zeus client sends.
    url = f"http://trainer:{token}@test/jobs"
    response = await auth_client.post(url, json=spec())
    assert response.status_code == 200, response.text
    assert response.request.headers["authorization"] == basic(token)["Authorization"]


async def test_refusals_challenge_for_bearer_and_basic_and_leak_nothing(
    auth_app: FastAPI, auth_client: httpx.AsyncClient
) -> None:
    token = await new_token(auth_app, "ci", Role.TRAINER)
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
    for headers in ({}, bearer(wrong), basic(wrong), _basic_raw(b"\xff")):
        response = await auth_client.get("/jobs", headers=headers)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == CHALLENGE
        # Two header lines: browsers see the Basic challenge on its own.
        assert response.headers.get_list("www-authenticate") == ["Bearer", 'Basic realm="bso"']
        assert set(response.json()) == {"message"}
        assert token[:-1] not in response.text and "ci" not in response.json()["message"]


async def test_with_auth_off_credentials_are_ignored(client: httpx.AsyncClient) -> None:
    garbage = {"Authorization": "Bearer nonsense"}
    assert (await client.post("/jobs", json=spec(), headers=garbage)).status_code == 201
    assert (await client.get("/dashboard", headers=garbage)).status_code == 200
    deleted = await client.delete("/jobs", params={"job_id": "job-1"}, headers=garbage)
    assert deleted.status_code == 200


async def test_the_dashboard_asks_a_browser_for_credentials_and_takes_a_viewer_token(
    auth_app: FastAPI, auth_client: httpx.AsyncClient, app: FastAPI, client: httpx.AsyncClient
) -> None:
    await register(client)  # the same database, through the app without auth
    for path in ("/dashboard", "/dashboard/jobs/job-1"):
        refused = await auth_client.get(path)
        assert refused.status_code == 401
        assert 'Basic realm="bso"' in refused.headers.get_list("www-authenticate")
    viewer = await new_token(auth_app, "wall-screen", Role.VIEWER)
    jobs = await auth_client.get("/dashboard", headers=basic(viewer, user="me"))
    assert jobs.status_code == 200 and "job-1" in jobs.text
    job = await auth_client.get("/dashboard/jobs/job-1", headers=basic(viewer))
    assert job.status_code == 200 and "job-1" in job.text


async def test_the_openapi_document_declares_both_schemes_and_the_refusals(
    auth_client: httpx.AsyncClient,
) -> None:
    doc = (await auth_client.get("/openapi.json")).json()
    schemes = doc["components"]["securitySchemes"]
    assert {name: (s["type"], s["scheme"]) for name, s in schemes.items()} == {
        "bearer": ("http", "bearer"),
        "basic": ("http", "basic"),
    }
    open_paths = {"/healthz", "/readyz"}
    forbidden_possible = {
        ("post", "/jobs"),
        ("get", "/jobs/batch_size"),
        ("post", "/report"),
        ("patch", "/trials"),
        ("delete", "/jobs"),
    }
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if path in open_paths:
                assert "security" not in op and "401" not in op["responses"], (method, path)
                continue
            assert op["security"] == [{"bearer": []}, {"basic": []}], (method, path)
            assert "401" in op["responses"], (method, path)
            assert "WWW-Authenticate" in op["responses"]["401"]["headers"]
            # Every token is at least a viewer's: a read is never forbidden.
            assert ("403" in op["responses"]) == ((method, path) in forbidden_possible)
