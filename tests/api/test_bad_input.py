"""Bad input through the HTTP API, on both backends: always a 4xx that names the field.

Every malformed, out-of-range, non-finite, mistyped or oversized value is
answered 422 (validation), 413 (body over 64 KiB), 404 (unknown job or trial)
or 409 (batch size or spec mismatch), with a JSON ``message``; never a 5xx,
and nothing is written. Unknown extra fields are ignored.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.helpers import SPEC, spec

JSON = {"content-type": "application/json"}
INT32_MAX = 2**31 - 1
LONG = "x" * 10_000
NONFINITE = ("NaN", "Infinity", "-Infinity", "1e400")  # 1e400 parses as infinity
RAW = "__raw_literal__"


@pytest.fixture
async def api(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Like ``client``, but a server error comes back as a response to assert on."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


def assert_rejected(response: httpx.Response, status: int, *names: str) -> dict[str, Any]:
    """A client error with ``status`` and a JSON message that names every one of ``names``."""
    where = f"{response.request.method} {response.request.url}"
    assert response.status_code < 500, f"{where} -> {response.status_code} {response.text}"
    assert response.status_code == status, f"{where} -> {response.status_code} {response.text}"
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert isinstance(body.get("message"), str) and body["message"], body
    for name in names:
        assert name in body["message"], f"{name!r} not named in {body['message']!r}"
    for leak in ("Traceback", "SELECT", "INSERT", "sqlalchemy", "asyncpg"):
        assert leak not in response.text, response.text
    return body


def raw_json(document: dict[str, Any], **literals: str) -> bytes:
    """JSON text with some values replaced by raw literals (NaN, Infinity, 1e400, ...)."""
    text = json.dumps({**document, **dict.fromkeys(literals, RAW)})
    for literal in literals.values():
        text = text.replace(f'"{RAW}"', literal, 1)
    return text.encode()


async def assert_no_jobs(api: httpx.AsyncClient) -> None:
    response = await api.get("/jobs")
    assert response.status_code == 200, response.text
    assert response.json()["items"] == [], "a rejected request wrote a job"


# ------------------------------------------------------------- job specs

BAD_SPECS = [
    # batch_sizes
    ("batch_sizes", {"batch_sizes": []}),
    ("batch_sizes", {"batch_sizes": [32, 32, 64]}),
    ("batch_sizes", {"batch_sizes": [-16, 64]}),
    ("batch_sizes", {"batch_sizes": [0, 64]}),
    ("batch_sizes", {"batch_sizes": [64, 2**31]}),
    ("batch_sizes", {"batch_sizes": [64, 10**30]}),
    ("batch_sizes", {"batch_sizes": [64, 1.5]}),
    ("batch_sizes", {"batch_sizes": [64, "abc"]}),
    ("batch_sizes", {"batch_sizes": [64, None]}),
    ("batch_sizes", {"batch_sizes": [64, [32]]}),
    ("batch_sizes", {"batch_sizes": "64"}),
    ("batch_sizes", {"batch_sizes": {"64": 64}}),
    ("batch_sizes", {"batch_sizes": list(range(1, 258))}),  # 257 of them
    # default_batch_size
    ("default_batch_size", {"default_batch_size": 48}),
    ("default_batch_size", {"default_batch_size": 0}),
    ("default_batch_size", {"default_batch_size": -64}),
    ("default_batch_size", {"default_batch_size": 2**31}),
    ("default_batch_size", {"default_batch_size": 6.4}),
    ("default_batch_size", {"default_batch_size": "sixty-four"}),
    # knobs
    ("eta_knob", {"eta_knob": -0.1}),
    ("eta_knob", {"eta_knob": 1.0001}),
    ("eta_knob", {"eta_knob": "half"}),
    ("eta_knob", {"eta_knob": [0.5]}),
    ("beta_knob", {"beta_knob": 0}),
    ("beta_knob", {"beta_knob": -2.0}),
    ("beta_knob", {"beta_knob": "two"}),
    ("target_metric", {"target_metric": 1e301}),
    ("target_metric", {"target_metric": -1e301}),
    ("target_metric", {"target_metric": "high"}),
    ("higher_is_better_metric", {"higher_is_better_metric": "maybe"}),
    ("higher_is_better_metric", {"higher_is_better_metric": 2}),
    ("higher_is_better_metric", {"higher_is_better_metric": [True]}),
    ("max_epochs", {"max_epochs": 0}),
    ("max_epochs", {"max_epochs": -1}),
    ("max_epochs", {"max_epochs": 2**31}),
    ("max_epochs", {"max_epochs": 1.5}),
    ("max_epochs", {"max_epochs": "many"}),
    ("num_pruning_rounds", {"num_pruning_rounds": -1}),
    ("num_pruning_rounds", {"num_pruning_rounds": 10**9}),
    ("window_size", {"window_size": -1}),
    ("window_size", {"window_size": 10_001}),
    ("window_size", {"window_size": 2**40}),
    ("mab_prior_mean", {"mab_prior_mean": 1e31}),
    ("mab_prior_mean", {"mab_prior_mean": -1e31}),
    ("mab_prior_precision", {"mab_prior_precision": -1.0}),
    ("mab_prior_precision", {"mab_prior_precision": 1e31}),
    ("mab_num_explorations", {"mab_num_explorations": -1}),
    ("mab_num_explorations", {"mab_num_explorations": 10**9}),
    ("mab_seed", {"mab_seed": -1}),
    ("mab_seed", {"mab_seed": 2**63}),
    ("mab_seed", {"mab_seed": 10**30}),
    ("mab_seed", {"mab_seed": 1.5}),
    ("mab_seed", {"mab_seed": "seed"}),
    # GPU configuration
    ("max_power", {"max_power": 0}),
    ("max_power", {"max_power": -300.0}),
    ("max_power", {"max_power": 1e10}),
    ("max_power", {"max_power": "300W"}),
    ("number_of_gpus", {"number_of_gpus": 0}),
    ("number_of_gpus", {"number_of_gpus": -1}),
    ("number_of_gpus", {"number_of_gpus": 10**7}),
    ("number_of_gpus", {"number_of_gpus": 1.5}),
    ("gpu_model", {"gpu_model": ""}),
    ("gpu_model", {"gpu_model": "A40\x00"}),
    ("gpu_model", {"gpu_model": "A40\nfake log line"}),
    ("gpu_model", {"gpu_model": "A" * 257}),
    ("gpu_model", {"gpu_model": 40}),
    # identifiers
    ("job_id_prefix", {"job_id_prefix": ""}),
    ("job_id_prefix", {"job_id_prefix": "jo\x00b", "job_id": "jo\x00b-1"}),
    ("job_id_prefix", {"job_id_prefix": "p" * 201, "job_id": None}),
    ("job_id_prefix", {"job_id_prefix": 7}),
    ("job_id", {"job_id": "other-1"}),  # does not start with the prefix
    ("job_id", {"job_id": ""}),
    ("job_id", {"job_id": "job-\x00"}),
    ("job_id", {"job_id": "job-\x1b[31mred"}),
    ("job_id", {"job_id": "job-\n1"}),
    ("job_id", {"job_id": "job-\r1"}),
    ("job_id", {"job_id": "job-\t1"}),
    ("job_id", {"job_id": "job-\x7f"}),
    ("job_id", {"job_id": "job-" + LONG}),
    ("job_id", {"job_id": 123}),
    ("job_id", {"job_id": ["job-1"]}),
    ("job_id", {"job_id": {"id": "job-1"}}),
]

REQUIRED = (
    "job_id_prefix",
    "batch_sizes",
    "default_batch_size",
    "max_power",
    "number_of_gpus",
    "gpu_model",
)
NOT_NULLABLE = (
    *REQUIRED,
    "eta_knob",
    "target_metric",
    "higher_is_better_metric",
    "max_epochs",
    "num_pruning_rounds",
    "window_size",
    "mab_prior_mean",
    "mab_prior_precision",
    "mab_num_explorations",
)
FLOAT_FIELDS = (
    "eta_knob",
    "beta_knob",
    "target_metric",
    "mab_prior_mean",
    "mab_prior_precision",
    "max_power",
)


def _case_id(field: str, overrides: object) -> str:
    assert isinstance(overrides, dict)
    return f"{field}={overrides[field]!r}"[:40]


@pytest.mark.parametrize(
    ("field", "overrides"),
    [pytest.param(f, o, id=_case_id(f, o)) for f, o in BAD_SPECS],
)
async def test_an_invalid_job_spec_is_rejected_naming_the_field(
    api: httpx.AsyncClient, field: str, overrides: dict[str, Any]
) -> None:
    response = await api.post("/jobs", json=spec(**overrides))
    body = assert_rejected(response, 422, field)
    assert body["detail"], body
    await assert_no_jobs(api)


@pytest.mark.parametrize(
    ("field", "literal"),
    # Every float field, every literal at least once (not all 24 pairs).
    [(f, NONFINITE[i % len(NONFINITE)]) for i, f in enumerate(FLOAT_FIELDS)]
    + [("eta_knob", "-Infinity"), ("max_power", "1e400")],
)
async def test_a_non_finite_number_in_a_job_spec_is_rejected(
    api: httpx.AsyncClient, field: str, literal: str
) -> None:
    response = await api.post("/jobs", content=raw_json(spec(), **{field: literal}), headers=JSON)
    assert_rejected(response, 422, field)
    await assert_no_jobs(api)


@pytest.mark.parametrize("field", ["max_epochs", "default_batch_size", "mab_seed"])
async def test_nan_in_an_integer_field_is_rejected(api: httpx.AsyncClient, field: str) -> None:
    response = await api.post("/jobs", content=raw_json(spec(), **{field: "NaN"}), headers=JSON)
    assert_rejected(response, 422, field)
    await assert_no_jobs(api)


@pytest.mark.parametrize("field", REQUIRED)
async def test_a_job_spec_missing_a_required_field_is_rejected(
    api: httpx.AsyncClient, field: str
) -> None:
    document = {k: v for k, v in SPEC.items() if k != field}
    assert_rejected(await api.post("/jobs", json=document), 422, field)
    await assert_no_jobs(api)


@pytest.mark.parametrize("field", NOT_NULLABLE)
async def test_null_for_a_non_nullable_field_is_rejected(
    api: httpx.AsyncClient, field: str
) -> None:
    assert_rejected(await api.post("/jobs", json=spec(**{field: None})), 422, field)
    await assert_no_jobs(api)


@pytest.mark.parametrize("field", ["job_id", "job_id_prefix", "gpu_model"])
async def test_c1_control_characters_in_identifiers_are_rejected(
    api: httpx.AsyncClient, field: str
) -> None:
    # U+0080..U+009F are control characters too (U+0085 is a line break in
    # many log viewers, U+009B a terminal's CSI), as unwelcome in ids and logs
    # as U+0000..U+001F.
    accepted = []
    for number, char in enumerate(["\x85", "\x9b", "\x80"]):
        overrides = {"job_id_prefix": "job", "job_id": f"job-{number}", field: f"job{char}-1"}
        if field == "job_id_prefix":
            overrides["job_id"] = f"job{char}-1-{number}"
        response = await api.post("/jobs", json=spec(**overrides))
        if response.status_code != 422:
            accepted.append((repr(char), response.status_code))
        else:
            assert_rejected(response, 422, field)
    assert not accepted, f"{field} accepted with C1 control characters: {accepted}"
    await assert_no_jobs(api)


WRONG_JSON_TYPES = [
    ("max_epochs", "10"),
    ("eta_knob", "0.5"),
    ("default_batch_size", "64"),
    ("batch_sizes", [16, 32, "64", 128]),
    ("batch_sizes", [True, 64]),
    ("number_of_gpus", True),
    ("higher_is_better_metric", "no"),
    ("higher_is_better_metric", 0),
]


async def test_numbers_and_booleans_of_the_wrong_json_type_are_rejected(
    api: httpx.AsyncClient,
) -> None:
    # JSON has numbers and booleans: "10" is a string, and true is not a batch size.
    accepted = []
    for number, (field, value) in enumerate(WRONG_JSON_TYPES):
        response = await api.post("/jobs", json=spec(job_id=f"job-{number}", **{field: value}))
        if response.status_code != 422:
            accepted.append((field, value, response.status_code))
        else:
            assert_rejected(response, 422, field)
    assert not accepted, f"accepted, coerced from the wrong JSON type: {accepted}"
    await assert_no_jobs(api)


MALFORMED_BODIES = [
    b"",
    b"{",
    b'{"job_id": "job-1",}',
    b"{'job_id': 'job-1'}",
    b'[{"job_id": "job-1"}]',
    b'"job-1"',
    b"null",
    b"\xff\xfe\x00{",
    b'{"job_id": "job-\xff"}',  # not UTF-8
    b"\xa5\xc7`#",
    b'{"job_id": "job-1"}garbage',
]


@pytest.mark.parametrize("body", MALFORMED_BODIES, ids=lambda b: repr(b)[:20])
@pytest.mark.parametrize("headers", [JSON, {}], ids=["json", "no-content-type"])
async def test_a_body_that_is_not_a_json_object_is_rejected(
    api: httpx.AsyncClient, body: bytes, headers: dict[str, str]
) -> None:
    assert_rejected(await api.post("/jobs", content=body, headers=headers), 422)
    assert_rejected(await api.post("/report", content=body, headers=headers), 422)
    assert_rejected(await api.patch("/trials", content=body, headers=headers), 422)
    await assert_no_jobs(api)


async def test_a_form_encoded_body_is_rejected(api: httpx.AsyncClient) -> None:
    response = await api.post("/jobs", data={"job_id": "job-1", "job_id_prefix": "job"})
    assert_rejected(response, 422)
    await assert_no_jobs(api)


async def test_the_zeus_client_style_body_without_a_content_type_is_accepted(
    api: httpx.AsyncClient,
) -> None:
    # Zeus's client posts `content=model.json()` with no content-type header.
    response = await api.post("/jobs", content=json.dumps(spec()).encode())
    assert response.status_code == 201, response.text


# ------------------------------------------------------------ body size


def _oversized_spec() -> bytes:
    return json.dumps(spec(gpu_model="A" * 70_000)).encode()


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/jobs"), ("POST", "/report"), ("PATCH", "/trials")]
)
async def test_a_body_over_64_kib_is_refused_with_413(
    api: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await api.request(method, path, content=_oversized_spec(), headers=JSON)
    assert_rejected(response, 413)
    await assert_no_jobs(api)


async def test_a_chunked_body_over_64_kib_without_a_length_is_refused_with_413(
    api: httpx.AsyncClient,
) -> None:
    payload = _oversized_spec()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 8192):
            yield payload[start : start + 8192]

    response = await api.post("/jobs", content=chunks(), headers=JSON)
    assert "content-length" not in response.request.headers
    assert_rejected(response, 413)
    await assert_no_jobs(api)


async def test_a_body_just_under_the_limit_is_accepted_and_its_extra_field_ignored(
    api: httpx.AsyncClient,
) -> None:
    response = await api.post("/jobs", json=spec(padding="p" * 60_000))
    assert response.status_code == 201, response.text
    assert "padding" not in response.json()


# ------------------------------------------------ conflicts and unknowns


async def test_registering_a_job_id_with_a_different_spec_is_a_409_naming_the_field(
    api: httpx.AsyncClient,
) -> None:
    assert (await api.post("/jobs", json=spec())).status_code == 201
    assert_rejected(await api.post("/jobs", json=spec(eta_knob=0.7)), 409, "eta_knob", "job-1")
    assert_rejected(
        await api.post("/jobs", json=spec(batch_sizes=[16, 64])), 409, "batch_sizes", "job-1"
    )
    stored = (await api.get("/jobs/job-1")).json()
    assert stored["eta_knob"] == 0.5
    assert stored["batch_sizes"] == [16, 32, 64, 128]


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("GET", "/jobs/batch_size", {"params": {"job_id": "job-404"}}),
        ("DELETE", "/jobs", {"params": {"job_id": "job-404"}}),
        ("GET", "/jobs/job-404", {}),
        ("GET", "/jobs/job-404/trials", {}),
        ("GET", "/jobs/job-404/arms", {}),
        (
            "POST",
            "/report",
            {
                "json": {
                    "job_id": "job-404",
                    "batch_size": 64,
                    "trial_number": 1,
                    "time": 1.0,
                    "energy": 1.0,
                    "metric": 0.5,
                    "current_epoch": 1,
                }
            },
        ),
        ("PATCH", "/trials", {"json": {"job_id": "job-404", "batch_size": 64, "trial_number": 1}}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_an_unknown_job_is_a_404_naming_it(
    api: httpx.AsyncClient, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    assert_rejected(await api.request(method, path, **kwargs), 404, "job-404")


@pytest.fixture
async def trial(api: httpx.AsyncClient) -> dict[str, Any]:
    """A registered job with one dispatched trial (batch size 64)."""
    assert (await api.post("/jobs", json=spec())).status_code == 201
    response = await api.get("/jobs/batch_size", params={"job_id": "job-1"})
    assert response.status_code == 200, response.text
    dispatched: dict[str, Any] = response.json()
    assert dispatched == {"job_id": "job-1", "batch_size": 64, "trial_number": 1}
    return dispatched


def _report(trial: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return {
        **trial,
        "time": 10.0,
        "energy": 1000.0,
        "metric": 0.95,
        "current_epoch": 1,
        **overrides,
    }


async def assert_trial_untouched(api: httpx.AsyncClient) -> None:
    """Trial 1 is still Dispatched with no result, and the job learnt nothing."""
    (only,) = (await api.get("/jobs/job-1/trials")).json()["items"]
    assert only["status"] == "Dispatched", only
    assert only["time"] is None and only["energy"] is None and only["converged"] is None, only
    job = (await api.get("/jobs/job-1")).json()
    assert job["min_cost"] is None and job["num_trials"] == 1, job


@pytest.mark.parametrize("method,path", [("POST", "/report"), ("PATCH", "/trials")])
async def test_an_unknown_trial_is_a_404_and_a_batch_size_mismatch_a_409(
    api: httpx.AsyncClient, trial: dict[str, Any], method: str, path: str
) -> None:
    body = _report(trial) if path == "/report" else dict(trial)
    assert_rejected(
        await api.request(method, path, json={**body, "trial_number": 2}), 404, "trial 2"
    )
    assert_rejected(
        await api.request(method, path, json={**body, "batch_size": 32}), 409, "64", "32"
    )
    await assert_trial_untouched(api)


# --------------------------------------------------------------- reports

BAD_REPORTS = [
    ("time", -1.0),
    ("time", 1e300),
    ("time", 1e13),
    ("time", "fast"),
    ("time", None),
    ("energy", -0.001),
    ("energy", 1e19),
    ("energy", "lots"),
    ("energy", None),
    ("metric", "good"),
    ("metric", None),
    ("metric", {"acc": 0.9}),
    ("current_epoch", 0),
    ("current_epoch", -1),
    ("current_epoch", 2**31),
    ("current_epoch", 1.5),
    ("current_epoch", "one"),
    ("trial_number", 0),
    ("trial_number", -1),
    ("trial_number", 2**31),
    ("trial_number", "one"),
    ("trial_number", None),
    ("batch_size", 0),
    ("batch_size", -64),
    ("batch_size", 2**31),
    ("job_id", ""),
    ("job_id", "job-\x00"),
    ("job_id", LONG),
    ("job_id", None),
]
REPORT_FIELDS = (
    "job_id",
    "batch_size",
    "trial_number",
    "time",
    "energy",
    "metric",
    "current_epoch",
)


@pytest.mark.parametrize(
    ("field", "value"),
    [pytest.param(f, v, id=f"{f}={v!r}"[:40]) for f, v in BAD_REPORTS],
)
async def test_an_invalid_report_is_rejected_and_changes_nothing(
    api: httpx.AsyncClient, trial: dict[str, Any], field: str, value: Any
) -> None:
    response = await api.post("/report", json=_report(trial, **{field: value}))
    assert_rejected(response, 422, field)
    await assert_trial_untouched(api)


@pytest.mark.parametrize(
    ("field", "literal"),
    [("time", "NaN"), ("time", "Infinity"), ("energy", "-Infinity"), ("energy", "1e400")]
    + [("metric", literal) for literal in NONFINITE],
)
async def test_a_non_finite_number_in_a_report_is_rejected(
    api: httpx.AsyncClient, trial: dict[str, Any], field: str, literal: str
) -> None:
    response = await api.post(
        "/report", content=raw_json(_report(trial), **{field: literal}), headers=JSON
    )
    assert_rejected(response, 422, field)
    await assert_trial_untouched(api)


@pytest.mark.parametrize("field", REPORT_FIELDS)
async def test_a_report_missing_a_field_is_rejected(
    api: httpx.AsyncClient, trial: dict[str, Any], field: str
) -> None:
    document = {k: v for k, v in _report(trial).items() if k != field}
    assert_rejected(await api.post("/report", json=document), 422, field)
    await assert_trial_untouched(api)


async def test_a_rejected_report_leaves_the_trial_usable(
    api: httpx.AsyncClient, trial: dict[str, Any]
) -> None:
    assert_rejected(await api.post("/report", json=_report(trial, time=-5.0)), 422, "time")
    response = await api.post("/report", json=_report(trial))
    assert response.status_code == 200, response.text
    assert response.json()["stop_train"] is True
    (only,) = (await api.get("/jobs/job-1/trials")).json()["items"]
    assert (only["status"], only["time"], only["energy"]) == ("Succeeded", 10.0, 1000.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("trial_number", 0),
        ("trial_number", "x"),
        ("batch_size", -1),
        ("batch_size", None),
        ("job_id", "job-\x00"),
        ("job_id", LONG),
        ("job_id", None),
    ],
    ids=lambda v: repr(v)[:20],
)
async def test_an_invalid_trial_end_is_rejected_and_changes_nothing(
    api: httpx.AsyncClient, trial: dict[str, Any], field: str, value: Any
) -> None:
    assert_rejected(await api.patch("/trials", json={**trial, field: value}), 422, field)
    document = {k: v for k, v in trial.items() if k != field}
    assert_rejected(await api.patch("/trials", json=document), 422, field)
    await assert_trial_untouched(api)


# --------------------------------------------------- query and path params

BAD_JOB_ID_QUERIES = ["", "job-\x00", "\x00", "job-\x1b[2J", "job\n-1", "job-\x7f", LONG]


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize("job_id", BAD_JOB_ID_QUERIES, ids=lambda v: repr(v)[:16])
async def test_an_invalid_job_id_query_is_rejected(
    api: httpx.AsyncClient, method: str, job_id: str
) -> None:
    path = "/jobs/batch_size" if method == "GET" else "/jobs"
    assert_rejected(await api.request(method, path, params={"job_id": job_id}), 422, "job_id")


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_a_missing_job_id_query_is_rejected(api: httpx.AsyncClient, method: str) -> None:
    path = "/jobs/batch_size" if method == "GET" else "/jobs"
    assert_rejected(await api.request(method, path), 422, "job_id")


async def test_a_rejected_delete_deletes_nothing(
    api: httpx.AsyncClient, trial: dict[str, Any]
) -> None:
    for job_id in ("", "job-1\x00", "job-1" + LONG):
        assert_rejected(await api.delete("/jobs", params={"job_id": job_id}), 422, "job_id")
    await assert_trial_untouched(api)


@pytest.mark.parametrize("suffix", ["", "/trials", "/arms"])
@pytest.mark.parametrize(
    "raw_id", ["%00", "job-%00", "job-%1B%5B31m", "job%0A-1", "%7F", "j" * 300], ids=repr
)
async def test_an_invalid_job_id_in_a_read_path_is_rejected(
    api: httpx.AsyncClient, raw_id: str, suffix: str
) -> None:
    assert_rejected(await api.get(f"/jobs/{raw_id}{suffix}"), 422, "job_id")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=-1", "limit"),
        ("limit=501", "limit"),
        ("limit=10000", "limit"),
        ("limit=ten", "limit"),
        ("limit=1e400", "limit"),
        ("after=" + "a" * 300, "after"),
        ("job_id_prefix=" + "p" * 300, "job_id_prefix"),
        ("after=%00", "after"),
        ("after=job-%1B", "after"),
        ("job_id_prefix=%00", "job_id_prefix"),
        ("job_id_prefix=job%0A", "job_id_prefix"),
    ],
)
async def test_an_invalid_job_list_filter_is_rejected(
    api: httpx.AsyncClient, query: str, field: str
) -> None:
    assert_rejected(await api.get(f"/jobs?{query}"), 422, field)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=Bogus", "status"),
        ("status=succeeded", "status"),
        ("type=Bogus", "type"),
        ("limit=0", "limit"),
        ("limit=10000", "limit"),
        ("after=-1", "after"),
        ("after=abc", "after"),
        (f"after={2**31}", "after"),
        (f"after={10**40}", "after"),
    ],
)
async def test_an_invalid_trial_list_filter_is_rejected(
    api: httpx.AsyncClient, trial: dict[str, Any], query: str, field: str
) -> None:
    assert_rejected(await api.get(f"/jobs/job-1/trials?{query}"), 422, field)


async def test_an_unsupported_method_is_a_405_with_a_message(api: httpx.AsyncClient) -> None:
    assert_rejected(await api.put("/jobs", json=spec()), 405)
    assert_rejected(await api.delete("/report"), 405)
    await assert_no_jobs(api)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/jobs", "DELETE, GET, POST"),  # three routes share the path
        ("PUT", "/jobs", "DELETE, GET, POST"),
        ("DELETE", "/report", "POST"),
        ("PUT", "/jobs/batch_size", "GET"),
        ("POST", "/jobs/job-1/trials", "GET"),
    ],
)
async def test_a_405_names_every_method_of_the_path_in_allow(
    api: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    response = await api.request(method, path)
    assert_rejected(response, 405)
    assert response.headers["allow"] == allow


# ----------------------------------------------------- unknown fields


async def test_unknown_extra_fields_and_query_params_are_ignored(api: httpx.AsyncClient) -> None:
    extras = {"unexpected": 1, "nested": {"deep": [1, 2, 3]}, "tags": ["a"], "job_type": None}
    created = await api.post("/jobs", json=spec(**extras))
    assert created.status_code == 201, created.text
    assert not set(extras) & set(created.json())
    again = await api.post("/jobs", json=spec(**extras, other="x"))
    assert again.status_code == 200, again.text

    dispatched = await api.get("/jobs/batch_size", params={"job_id": "job-1", "verbose": "1"})
    assert dispatched.status_code == 200, dispatched.text
    trial = dispatched.json()
    report = await api.post("/report", json={**_report(trial, metric=0.1), **extras})
    assert report.status_code == 200, report.text
    assert report.json()["stop_train"] is False
    ended = await api.patch("/trials", json={**trial, **extras})
    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] == "Failed"
    listed = await api.get("/jobs/job-1/trials", params={"colour": "blue"})
    assert listed.status_code == 200 and len(listed.json()["items"]) == 1


async def test_whole_number_floats_are_accepted_where_integers_are_expected(
    api: httpx.AsyncClient,
) -> None:
    # JSON Schema's integer is any number without a fraction: 64.0 is 64.
    wholes = {"batch_sizes": [16.0, 32, 64.0, 128], "default_batch_size": 64.0,
              "max_epochs": 10.0, "num_pruning_rounds": 2.0, "window_size": 0.0,
              "mab_num_explorations": 2.0, "mab_seed": 7.0, "number_of_gpus": 1.0}  # fmt: skip
    created = await api.post("/jobs", json=spec(**wholes))
    assert created.status_code == 201, created.text
    assert created.json() == {**created.json(), **spec()}  # stored as the integers
    assert all(
        type(v) is int for k, v in created.json().items() if k in wholes and k != "batch_sizes"
    )
    again = await api.post("/jobs", json=spec())  # the same job
    assert again.status_code == 200, again.text
    trial = (await api.get("/jobs/batch_size", params={"job_id": "job-1"})).json()
    floats = {**trial, "batch_size": float(trial["batch_size"]), "trial_number": 1.0}
    report = await api.post("/report", json=_report(floats, metric=0.1) | {"current_epoch": 1.0})
    assert report.status_code == 200, report.text
    for field, value in [("max_epochs", 10.5), ("default_batch_size", 64.000001),
                         ("mab_seed", 1e300), ("number_of_gpus", "1.0")]:  # fmt: skip
        assert_rejected(await api.post("/jobs", json=spec(job_id="job-2", **{field: value})), 422)


async def test_integers_are_accepted_where_floats_are_expected(api: httpx.AsyncClient) -> None:
    # Strict types must not refuse 1 for 1.0: JSON does not tell them apart.
    floats = {
        "eta_knob": 1,
        "beta_knob": 2,
        "target_metric": 1,
        "mab_prior_mean": 0,
        "mab_prior_precision": 0,
        "max_power": 300,
    }
    created = await api.post("/jobs", json=spec(**floats))
    assert created.status_code == 201, created.text
    trial = (await api.get("/jobs/batch_size", params={"job_id": "job-1"})).json()
    report = await api.post("/report", json=_report(trial, time=10, energy=1000, metric=1))
    assert report.status_code == 200, report.text
    assert report.json() == {**report.json(), "stop_train": True, "converged": True}
