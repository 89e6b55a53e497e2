"""/metrics in one process: what each use case and request adds, as a scraper reads it.

The counters belong to the test process and grow across tests, so every test
compares a scrape after with a scrape before.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from app import service, sweeper
from app.bandit import Lease
from tests.helpers import dispatch, finish, register, report

Samples = defaultdict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = defaultdict(float)
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] += sample.value
    return samples


def grown(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after[key] - before[key]


async def test_dispatches_are_counted_by_trial_type(client: httpx.AsyncClient) -> None:
    job_id = await register(client)
    before = await scrape(client)
    await dispatch(client, job_id)  # the default batch size, explored
    await dispatch(client, job_id)  # while it runs: a Concurrent trial
    after = await scrape(client)
    assert grown(before, after, "bso_trials_dispatched_total", type="Exploration") == 1
    assert grown(before, after, "bso_trials_dispatched_total", type="Concurrent") == 1
    assert grown(before, after, "bso_trials_dispatched_total", type="MAB") == 0


async def test_reports_are_counted_by_outcome_and_ended_trials_by_status(
    client: httpx.AsyncClient,
) -> None:
    job_id = await register(client)  # batch sizes 16..128 from 64, beta 2, max_epochs 10
    before = await scrape(client)
    first = await dispatch(client, job_id)  # 64
    keep = await report(client, first, time=1.0, energy=100.0, metric=0.1, epoch=1)
    assert keep.json()["stop_train"] is False
    await finish(client, first, cost_time=10.0)  # cost 2000: converged, min_cost
    assert (await report(client, first, time=10.0, energy=1000.0, metric=0.95, epoch=1)).json()[
        "stop_train"
    ], "a retried final report is answered again"
    second = await dispatch(client, job_id)  # 32
    await finish(client, second, cost_time=100.0, converged=False)  # cost 20000 > 2 x 2000
    third = await dispatch(client, job_id)  # 128
    await finish(client, third, cost_time=1.0, converged=False, epoch=10)  # budget spent
    fourth = await dispatch(client, job_id)
    assert (await client.patch("/trials", json=fourth)).json()["status"] == "Failed"
    after = await scrape(client)

    reports = {
        outcome: grown(before, after, "bso_reports_total", outcome=outcome)
        for outcome in ("keep_training", "converged", "stopped_early", "max_epochs")
    }
    assert reports == {"keep_training": 1, "converged": 1, "stopped_early": 1, "max_epochs": 1}
    assert grown(before, after, "bso_reports_total", outcome="already_ended") == 1
    assert grown(before, after, "bso_trials_ended_total", status="Succeeded") == 3
    assert grown(before, after, "bso_trials_ended_total", status="Failed") == 1


async def test_requests_are_labelled_by_route_template_never_by_job_or_raw_path(
    client: httpx.AsyncClient,
) -> None:
    before = await scrape(client)
    assert (await client.get("/jobs/secret-job-42")).status_code == 404
    assert (await client.get("/jobs/secret-job-42/trials")).status_code == 404
    assert (await client.get("/no/such/secret-path")).status_code == 404
    assert (await client.request("BREW", "/jobs")).status_code == 405
    after = await scrape(client)

    count = "bso_http_requests_total"
    assert grown(before, after, count, method="GET", route="/jobs/{job_id}", status="404") == 1
    assert (
        grown(before, after, count, method="GET", route="/jobs/{job_id}/trials", status="404") == 1
    )
    assert grown(before, after, count, method="GET", route="unmatched", status="404") == 1
    assert grown(before, after, count, method="other", route="/jobs", status="405") == 1
    histogram = "bso_http_request_duration_seconds_count"
    assert grown(before, after, histogram, method="GET", route="/jobs/{job_id}", status="404") == 1
    labels = {value for _, pairs in after for _, value in pairs}
    assert not [v for v in labels if "secret" in v or "BREW" in v], labels


async def test_metrics_lists_every_documented_metric_from_zero(client: httpx.AsyncClient) -> None:
    samples = await scrape(client)
    names = {name for name, _ in samples}
    expected: dict[str, list[dict[str, Any]]] = {
        "bso_trials_dispatched_total": [{"type": t} for t in ("Exploration", "Concurrent", "MAB")],
        "bso_trials_ended_total": [{"status": s} for s in ("Succeeded", "Failed")],
        "bso_reports_total": [
            {"outcome": o}
            for o in ("keep_training", "converged", "stopped_early", "max_epochs", "already_ended")
        ],
        "bso_database_errors_total": [{"kind": k} for k in ("busy", "unavailable")],
        "bso_leases_expired_total": [{}],
    }
    for name, label_sets in expected.items():
        for labels in label_sets:
            assert (name, frozenset(labels.items())) in samples, (name, labels)
    # The request metrics of the scrape before this one.
    assert {"bso_http_requests_total", "bso_http_request_duration_seconds_bucket"} <= names


async def test_expired_leases_are_counted_by_dispatch_and_by_the_sweep(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    engine, lease = app.state.engine, Lease(60)
    job_id = await register(client)
    dispatched = service.utcnow()
    await service.dispatch_trial(engine, job_id, now=dispatched, lease=lease)  # 64, abandoned
    before = await scrape(client)
    later = dispatched + timedelta(seconds=61)
    await service.dispatch_trial(engine, job_id, now=later, lease=lease)  # expires it, takes 64
    after = await scrape(client)
    assert grown(before, after, "bso_leases_expired_total") == 1
    assert grown(before, after, "bso_trials_ended_total", status="Failed") == 1
    assert await sweeper.expire_leases(engine, now=later + timedelta(seconds=61), lease=lease) == 1
    swept = await scrape(client)
    assert grown(after, swept, "bso_leases_expired_total") == 1
