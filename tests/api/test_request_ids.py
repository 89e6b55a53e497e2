"""Every answer carries X-Request-ID: the client's when it is sane, else a new one."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.helpers import register, spec

GENERATED = re.compile(r"[0-9a-f]{32}")


async def test_a_sane_client_id_is_echoed(client: httpx.AsyncClient) -> None:
    for given in ("abc", "3f2c9a6e-1b7d-4c2a-9e55-0d1f2a3b4c5d", "trace:42/span=7", "x" * 128):
        response = await client.get("/healthz", headers={"X-Request-ID": given})
        assert response.headers["x-request-id"] == given


@pytest.mark.parametrize(
    "given",
    ["", "x" * 129, "two words", "semi;colon", 'quote"d', "tab\there", "caf\u00e9"],
)
async def test_a_missing_or_odd_client_id_is_replaced_by_a_new_one(
    client: httpx.AsyncClient, given: str
) -> None:
    response = await client.get("/healthz", headers={b"X-Request-ID": given.encode("utf-8")})
    assert GENERATED.fullmatch(response.headers["x-request-id"]), response.headers


async def test_generated_ids_differ_per_request(client: httpx.AsyncClient) -> None:
    ids = {(await client.get("/healthz")).headers["x-request-id"] for _ in range(20)}
    assert len(ids) == 20 and all(GENERATED.fullmatch(i) for i in ids)


async def test_error_answers_carry_the_id_too(client: httpx.AsyncClient) -> None:
    job_id = await register(client)
    cases = {
        "unknown job 404": client.get("/jobs/batch_size", params={"job_id": "nobody"}),
        "unmatched 404": client.get("/no/such/path"),
        "405": client.put("/jobs"),
        "invalid 422": client.post("/report", json={"job_id": job_id}),
        "conflict 409": client.post("/jobs", json=spec(max_epochs=99)),
        "too large 413": client.post("/report", content=b"{" + b" " * 70_000 + b"}"),
    }
    for name, request in cases.items():
        response = await request
        assert response.status_code == int(name.rsplit(" ", 1)[-1]), (name, response.text)
        assert GENERATED.fullmatch(response.headers.get("x-request-id", "")), name
    response = await client.put("/jobs", headers={"X-Request-ID": "mine-1"})
    assert response.headers["x-request-id"] == "mine-1"
