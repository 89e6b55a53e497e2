"""The dashboard and docs pages over the in-process app: content, escaping, links, refresh."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from html import unescape
from html.parser import HTMLParser
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from markupsafe import escape

from app import service, sweeper
from app.bandit import Lease
from app.dashboard import views
from tests.helpers import dispatch, end, finish, register

NASTY = "odd/<script>alert(1)</script>\"'&?x=1#y %41"


class Links(HTMLParser):
    """Every src/href of a page, and the text of a given element."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value or "" for name, value in attrs if name in ("src", "href")]


def links(html: str) -> list[str]:
    parser = Links()
    parser.feed(html)
    return parser.urls


def embedded_data(html: str) -> dict[str, object]:
    match = re.search(r'<script type="application/json" id="dashboard-data">(.*?)</script>', html)
    assert match is not None
    data: dict[str, object] = json.loads(match.group(1))
    return data


async def page(client: httpx.AsyncClient, path: str, status: int = 200) -> str:
    response = await client.get(path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    return response.text


async def test_an_empty_dashboard_says_how_to_start(client: httpx.AsyncClient) -> None:
    html = await page(client, "/dashboard")
    assert "No jobs yet" in html and "How savings are estimated" in html


async def test_a_job_id_is_escaped_everywhere_and_percent_encoded_in_links(
    client: httpx.AsyncClient,
) -> None:
    await register(client, job_id=NASTY, job_id_prefix="odd")
    listing = await page(client, "/dashboard")
    assert "<script>alert" not in listing
    assert escape(NASTY) in listing
    href = "/dashboard/jobs/" + quote(NASTY, safe="")
    assert href in [unescape(u) for u in links(listing)]
    job_page = await page(client, href)
    assert "<script>alert" not in job_page
    assert f'<h1 id="job-id">{escape(NASTY)}</h1>' in job_page


async def test_the_job_page_shows_trials_arms_and_pruning_of_the_job(
    client: httpx.AsyncClient,
) -> None:
    job_id = await register(client, num_pruning_rounds=1, batch_sizes=[32, 64], mab_seed=3)
    for cost_time, converged in ((2.0, True), (1.0, True)):
        await finish(
            client, await dispatch(client, job_id), cost_time=cost_time, converged=converged
        )
    failed = await dispatch(client, job_id)  # the bandit's first choice; the script dies
    await end(client, failed)
    html = await page(client, f"/dashboard/jobs/{job_id}")
    data = embedded_data(html)
    assert data["trials"] == [
        {"trial_number": 1, "batch_size": 64, "type": "Exploration", "cost": 400.0,
         "outcome": "converged"},
        {"trial_number": 2, "batch_size": 32, "type": "Exploration", "cost": 200.0,
         "outcome": "converged"},
        {"trial_number": 3, "batch_size": failed["batch_size"], "type": "MAB", "cost": None,
         "outcome": "failed"},
    ]  # fmt: skip
    assert data["arms"] == [
        {"batch_size": 32, "mean": 200.0, "low": 200.0, "high": 200.0, "num_observations": 1},
        {"batch_size": 64, "mean": 400.0, "low": 400.0, "high": 400.0, "num_observations": 1},
    ]
    assert 'id="best-arm">32<' in html
    assert '<tr data-trial-number="3" class="failed">' in html
    assert "kept: a bandit arm" in html
    # One converged run at the default (64) cost 400; both runs together 600.
    assert 'id="savings">200 J (+25.0%)<' in html


async def test_the_job_page_says_when_a_round_converged_nowhere(
    client: httpx.AsyncClient,
) -> None:
    job_id = await register(client, batch_sizes=[32, 64], default_batch_size=32)
    for _ in range(2):
        await finish(client, await dispatch(client, job_id), cost_time=1.0, converged=False,
                     epoch=10)  # fmt: skip
    walking = await page(client, f"/dashboard/jobs/{job_id}")
    assert 'id="walked-again"' in walking and 'id="dead-end"' not in walking
    for _ in range(3):  # the second walk (32, 64), then the fallback
        await finish(client, await dispatch(client, job_id), cost_time=1.0, converged=False,
                     epoch=10)  # fmt: skip
    html = await page(client, f"/dashboard/jobs/{job_id}")
    assert 'id="dead-end">No batch size converged in pruning round 1, walked 2 times' in html
    assert "<th>Exploration 4</th>" not in html and "<th>Exploration 2</th>" in html
    assert "kept: a bandit arm" in html


async def test_a_page_refreshes_itself_while_a_trial_runs(client: httpx.AsyncClient) -> None:
    job_id = await register(client)
    refresh = '<meta http-equiv="refresh" content="5">'
    assert refresh not in await page(client, f"/dashboard/jobs/{job_id}")
    trial = await dispatch(client, job_id)
    running = await page(client, f"/dashboard/jobs/{job_id}")
    assert refresh in running and "1 trial running" in running
    assert refresh in await page(client, "/dashboard")
    await finish(client, trial, cost_time=1.0)
    assert refresh not in await page(client, f"/dashboard/jobs/{job_id}")
    assert refresh not in await page(client, "/dashboard")


async def test_long_histories_are_bounded_to_the_most_recent_trials(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views, "TRIAL_WINDOW", 3)
    monkeypatch.setattr(views, "TRIAL_PAGE", 2)  # several pages per window
    job_id = await register(client)
    for _ in range(5):
        await end(client, await dispatch(client, job_id))
    html = await page(client, f"/dashboard/jobs/{job_id}")
    trials = embedded_data(html)["trials"]
    assert isinstance(trials, list)
    assert [t["trial_number"] for t in trials] == [3, 4, 5]
    assert "The last 3 of 5 trials" in html


async def test_the_jobs_list_is_paged(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views, "JOBS_PER_PAGE", 2)
    for name in ("job-a", "job-b", "job-c"):
        await register(client, job_id=name)
    first = await page(client, "/dashboard")
    assert "job-a" in first and "job-b" in first and "job-c" not in first
    (next_link,) = [unescape(u) for u in links(first) if "after=" in u]
    second = await page(client, next_link)
    assert "job-c" in second and "job-a" not in second


async def test_an_unknown_job_is_an_html_404(client: httpx.AsyncClient) -> None:
    html = await page(client, "/dashboard/jobs/" + quote("<nope>", safe=""), status=404)
    assert "Unknown job" in html and "&lt;nope&gt;" in html and "<nope>" not in html


async def test_every_page_references_only_files_of_this_service(
    client: httpx.AsyncClient,
) -> None:
    job_id = await register(client, group="g")
    await finish(client, await dispatch(client, job_id), cost_time=1.0)
    paths = ["/dashboard", f"/dashboard/jobs/{job_id}", "/dashboard/jobs/none", "/docs", "/redoc"]
    paths += ["/dashboard/groups/g", "/dashboard/groups/none"]
    for path in paths:
        response = await client.get(path)
        urls = links(response.text)
        assert urls, path
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), (path, url)
            if url.startswith("/static/"):
                asset = await client.get(url)
                assert asset.status_code == 200, (path, url)
        assert "http://" not in response.text and "https://" not in response.text, path


async def test_the_docs_pages_load_the_packaged_swagger_ui_and_redoc(
    client: httpx.AsyncClient,
) -> None:
    swagger = await page(client, "/docs")
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in swagger
    assert '"validatorUrl": null' in swagger
    redoc = await page(client, "/redoc")
    assert '<redoc spec-url="/openapi.json">' in redoc
    assert "/static/vendor/fonts/fonts.css" in redoc
    script = await client.get("/static/vendor/redoc/redoc.standalone.js")
    assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))


async def test_pages_behind_a_proxy_prefix_link_under_that_prefix(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app, root_path="/bso")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for path in ("/docs", "/redoc", "/dashboard"):
            response = await client.get(path)
            assert response.status_code == 200, path
            assert all(u.startswith("/bso/") for u in links(response.text)), path


async def test_the_job_page_and_the_list_show_the_policy(client: httpx.AsyncClient) -> None:
    job_id = await register(client, policy="predictive")
    await register(client, job_id="job-2")
    assert '<span class="value" id="policy">predictive</span>' in await page(
        client, f"/dashboard/jobs/{job_id}"
    )
    listing = await page(client, "/dashboard")
    assert '<td class="policy">predictive</td>' in listing
    assert '<td class="policy">zeus</td>' in listing


async def test_a_trial_whose_lease_expired_is_marked_so(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    job_id = await register(client)
    lease, at = Lease(60), service.utcnow()
    await service.dispatch_trial(app.state.engine, job_id, now=at, lease=lease)  # abandoned
    later = at + timedelta(seconds=61)
    assert await sweeper.expire_leases(app.state.engine, now=later, lease=lease) == 1
    await end(client, await dispatch(client, job_id))  # ended by its script: no mark
    html = await page(client, f"/dashboard/jobs/{job_id}")
    lapsed = html.split('<tr data-trial-number="1" class="failed">', 1)[1].split("</tr>", 1)[0]
    ended = html.split('<tr data-trial-number="2" class="failed">', 1)[1].split("</tr>", 1)[0]
    assert "(lease expired)" in lapsed
    assert "(lease expired)" not in ended


ODD_GROUP = "team/<i>bert</i> & ?x=1#y %41"


def row_cells(html: str, attribute: str, value: object) -> list[str]:
    """The text of each cell of the table row marked ``attribute="value"``."""
    row = html.split(f'<tr {attribute}="{escape(str(value))}"', 1)[1].split("</tr>", 1)[0]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.DOTALL)
    return [unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in cells]


async def test_the_group_page_shows_the_shared_statistics_and_each_job(
    client: httpx.AsyncClient,
) -> None:
    a40 = await register(client, job_id="job-a40", group=ODD_GROUP, gpu_model="NVIDIA A40")
    await finish(client, await dispatch(client, a40), cost_time=3.0, epoch=4)  # 64 converges
    await finish(client, await dispatch(client, a40), cost_time=2.0, epoch=6)  # 32 converges
    sixteen = await dispatch(client, a40)
    assert sixteen["batch_size"] == 16
    await finish(client, sixteen, cost_time=1.0, converged=False, epoch=10)  # exhausted
    v100 = await register(client, job_id="job-v100", group=ODD_GROUP, gpu_model="Tesla V100")
    await register(client, job_id="job-alone")

    href = "/dashboard/" + "groups/" + quote(ODD_GROUP, safe="")
    html = await page(client, href)
    assert "<i>bert</i>" not in html
    assert f'<h1 id="group-name">{escape(ODD_GROUP)}</h1>' in html
    assert 'id="max-epochs">10<' in html and 'id="num-members">2<' in html
    # batch size, runs, exhausted, never converged, converged, fewest and mean epochs
    assert row_cells(html, "data-batch-size", 16) == ["16", "1", "1", "yes", "0", "-", "-"]
    assert row_cells(html, "data-batch-size", 32) == ["32", "1", "0", "no", "1", "6", "6.0"]
    assert row_cells(html, "data-batch-size", 64) == ["64", "1", "0", "no", "1", "4", "4.0"]
    assert row_cells(html, "data-batch-size", 128) == ["128", "0", "0", "no", "0", "-", "-"]
    assert '<tr data-batch-size="16" class="never-converged">' in html
    # job, GPU, policy, stage, trials, best batch size, min cost
    assert row_cells(html, "data-job-id", a40) == [
        a40, "1 \u00d7 NVIDIA A40", "zeus", "Pruning", "3", "32", "400 J",
    ]  # fmt: skip
    assert row_cells(html, "data-job-id", v100) == [
        v100, "1 \u00d7 Tesla V100", "zeus", "Pruning", "0", "-", "-",
    ]  # fmt: skip
    assert "job-alone" not in html
    urls = [unescape(u) for u in links(html)]
    assert f"/dashboard/jobs/{a40}" in urls and f"/dashboard/jobs/{v100}" in urls

    # The job page and the jobs list link to the group; a job without one shows none.
    assert href in [unescape(u) for u in links(await page(client, f"/dashboard/jobs/{a40}"))]
    assert 'id="group"' not in await page(client, "/dashboard/jobs/job-alone")
    listing = await page(client, "/dashboard")
    assert [unescape(u) for u in links(listing)].count(href) == 2
    assert row_cells(listing, "data-job-id", "job-alone")[-1] == "-"


async def test_the_group_page_pages_its_jobs(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views, "MEMBERS_PER_PAGE", 2)
    for name in ("job-a", "job-b", "job-c"):
        await register(client, job_id=name, group="g")
    first = await page(client, "/dashboard/groups/g")
    assert "job-a" in first and "job-b" in first and "job-c" not in first
    assert 'id="num-members">2+<' in first
    (next_link,) = [unescape(u) for u in links(first) if "after=" in u]
    second = await page(client, next_link)
    assert "job-c" in second and "job-a" not in second


async def test_an_unknown_group_is_an_html_404(client: httpx.AsyncClient) -> None:
    html = await page(client, "/dashboard/groups/" + quote("<nope>", safe=""), status=404)
    assert "Unknown job group" in html and "&lt;nope&gt;" in html and "<nope>" not in html
