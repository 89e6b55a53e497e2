"""Every request the client sends is one the server's own /openapi.json accepts.

The client does not import the server's schemas (it must stay light), so this
test is what keeps the two from drifting apart: each body and query string
the client sent in a full life cycle, sync and async, with every optional
field of the spec exercised, is validated against the served schema of its
operation with a JSON Schema validator.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import MISSING, fields
from typing import Any

import httpx
import jsonschema_rs
import pytest
from bso_client import AsyncBatchSizeOptimizer, BatchSizeOptimizer, JobSpec

from tests.client.conftest import CountingMeter, Recorder, spec
from tests.support.server import Server


def validator(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A validator of ``schema`` whose ``#/components/...`` references resolve in ``document``."""
    return jsonschema_rs.validator_for({**schema, "components": document["components"]})


def check(document: dict[str, Any], request: httpx.Request) -> str:
    """Validate one request against its operation; return "METHOD /path"."""
    operation = document["paths"][request.url.path][request.method.lower()]
    body = request.content
    if body:
        assert request.headers["content-type"] == "application/json"
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        errors = [e.message for e in validator(document, schema).iter_errors(json.loads(body))]
        assert not errors, (request.method, request.url.path, errors)
    else:
        assert "requestBody" not in operation or not operation["requestBody"].get("required")
    declared = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "query"}
    sent = dict(request.url.params)
    assert set(sent) <= set(declared), (request.url.path, sent)
    for name, parameter in declared.items():
        if parameter.get("required"):
            assert name in sent, (request.url.path, name)
        if name in sent:
            ok = validator(document, parameter["schema"]).is_valid(sent[name])
            assert ok, (request.url.path, name, sent[name])
    return f"{request.method} {request.url.path}"


def life_cycle(bso: BatchSizeOptimizer) -> None:
    with bso.trial() as trial:
        trial.report(metric=0.5)
        trial.report(metric=0.6, time=1.5, energy=30)  # ints from the caller too
    with bso.trial() as trial:
        trial.report(metric=0.99)


async def async_life_cycle(bso: AsyncBatchSizeOptimizer) -> None:
    async with bso.trial() as trial:
        await trial.report(metric=0.5)
    async with bso.trial() as trial:
        await trial.report(metric=0.99, time=2, energy=10.0)


SPECS = {
    "defaults": {},
    "everything": {
        "eta_knob": 1,
        "beta_knob": None,
        "higher_is_better_metric": False,
        "target_metric": 0.2,
        "window_size": 3,
        "mab_prior_mean": -5,
        "mab_prior_precision": 0.5,
        "mab_num_explorations": 1,
        "mab_seed": None,
        "policy": "predictive",
        "num_pruning_rounds": 0,
        "gpu_model": "NVIDIA A100-SXM4-80GB",
        "number_of_gpus": 4,
        "max_power": 1600,
        "group": "contract-group",
    },
}


@pytest.mark.parametrize("variant", SPECS)
def test_every_request_matches_the_served_openapi_schema(
    server: Server, job_id: str, variant: str
) -> None:
    document = httpx.get(server.base_url + "/openapi.json").json()
    recorder = Recorder()
    with recorder.client() as http:
        job = spec(job_id, **SPECS[variant])
        life_cycle(BatchSizeOptimizer(job=job, url=server.base_url, energy=CountingMeter(),
                                      http_client=http))  # fmt: skip
        # A null job_id (the server makes one).
        life_cycle(BatchSizeOptimizer(job=spec(None, **SPECS[variant]), url=server.base_url,
                                      energy=CountingMeter(), http_client=http))  # fmt: skip

    async def in_asyncio() -> None:
        async with recorder.async_client() as ahttp:
            await async_life_cycle(
                AsyncBatchSizeOptimizer(job=spec(job_id, **SPECS[variant]), url=server.base_url,
                                        energy=CountingMeter(), http_client=ahttp)
            )  # fmt: skip

    # On its own thread: asyncio.run must not unset the tests' session event loop.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, in_asyncio()).result()
    assert all(status < 300 for _, _, status in recorder.answers), recorder.answers
    checked = {check(document, request) for request in recorder.requests}
    assert checked == {"POST /jobs", "GET /jobs/batch_size", "POST /report", "PATCH /trials"}


def served_job_spec(document: dict[str, Any]) -> dict[str, Any]:
    """The schema the served POST /jobs takes, its reference followed."""
    schema = document["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]
    reference = schema["schema"]["$ref"].removeprefix("#/components/schemas/")
    return dict(document["components"]["schemas"][reference])


def test_the_clients_job_spec_has_exactly_the_servers_fields(server: Server) -> None:
    """One JobSpec, two sides: a field the server takes and the client lacks (or the
    reverse) fails here, so the client's copy cannot drift again."""
    served = served_job_spec(httpx.get(server.base_url + "/openapi.json").json())
    ours = {f.name for f in fields(JobSpec)}
    assert ours == set(served["properties"]), (
        f"missing in the client: {sorted(set(served['properties']) - ours)}; "
        f"unknown to the server: {sorted(ours - set(served['properties']))}"
    )
    # The required ones are the client's required arguments (no default).
    required = {f.name for f in fields(JobSpec) if f.default is MISSING}
    hardware = {"max_power", "number_of_gpus", "gpu_model"}  # filled from the meter
    assert required == set(served["required"]) - hardware
    # Defaults agree where the server states one.
    for f in fields(JobSpec):
        if "default" in served["properties"][f.name] and f.default is not MISSING:
            assert f.default == served["properties"][f.name]["default"], f.name


def test_the_validator_is_not_blind(server: Server) -> None:
    """What the check would say of a drifted client: a renamed field, a string number."""
    document = httpx.get(server.base_url + "/openapi.json").json()
    schema = document["paths"]["/report"]["post"]["requestBody"]["content"]["application/json"]
    report = validator(document, schema["schema"])
    good = {"job_id": "j", "batch_size": 8, "trial_number": 1, "time": 1.0, "energy": 2.0,
            "metric": 0.5, "current_epoch": 1}  # fmt: skip
    assert report.is_valid(good)
    assert not report.is_valid({**good, "current_epoch": "1"})
    drifted = dict(good)
    drifted["epoch"] = drifted.pop("current_epoch")
    assert not report.is_valid(drifted)
