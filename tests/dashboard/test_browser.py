"""The dashboard and the API docs in a real headless Chromium, against a real server.

One server process on a fresh SQLite file, one job made by ``bso simulate``
(plus one recurrence whose script died: a Failed trial), one job whose id
needs URL-encoding, a job group of two GPUs made by ``bso simulate
--sharing group``, and one browser for the module. Every page must render
that data, draw its charts from it, log no console error and ask no other
host for anything.

``BSO_UPDATE_SCREENSHOT=1`` also saves the job page to docs/img/dashboard.png
(the screenshot in the README and docs/dashboard.md).
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from app.dashboard.estimates import estimate_savings, outcome
from app.dashboard.render import joules, percent
from app.schemas import TrialRead
from tests.helpers import SPEC
from tests.support.browser import (
    assert_offline_and_clean,
    chromium,
    console_errors,
    requested_urls,
)
from tests.support.server import REPO_ROOT, Server, bso_args, clean_env, free_port, running_server

ODD_JOB = 'odd/<b>"x"</b> & ?q=1#frag %41 ü'
SCREENSHOT = REPO_ROOT / "docs" / "img" / "dashboard.png"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    env = clean_env(BSO_DATABASE_URL=f"sqlite:///{folder / 'bso.db'}", BSO_LOG_LEVEL="WARNING")
    with running_server(
        bso_args("serve", "--port", str(port)),
        port=port,
        env=env,
        log_dir=folder,
        cwd=folder,
        ready_path="/readyz",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def job_id(server: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A job made by a simulated run, then one recurrence that failed."""
    simulate = subprocess.run(
        bso_args("simulate", "--url", server.base_url, "-w", "cifar100", "-g", "p100", "-n", "20"),
        env=clean_env(),
        cwd=tmp_path_factory.mktemp("simulate"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert simulate.returncode == 0, simulate.stdout + simulate.stderr
    with httpx.Client(base_url=server.base_url) as http:
        (job,) = http.get("/jobs", params={"job_id_prefix": "sim-cifar100-p100"}).json()["items"]
        trial = http.get("/jobs/batch_size", params={"job_id": job["job_id"]}).json()
        assert http.patch("/trials", json=trial).json()["status"] == "Failed"
        return str(job["job_id"])


@pytest.fixture(scope="module")
def odd_job(server: Server) -> str:
    """A job whose id holds HTML and every character that a URL path reserves."""
    with httpx.Client(base_url=server.base_url) as http:
        spec = {**SPEC, "job_id": ODD_JOB, "job_id_prefix": "odd"}
        assert http.post("/jobs", json=spec).status_code == 201
        trial = http.get("/jobs/batch_size", params={"job_id": ODD_JOB}).json()
        report = {**trial, "time": 10.0, "energy": 1000.0, "metric": 0.95, "current_epoch": 1}
        assert http.post("/report", json=report).json()["converged"] is True
        http.patch("/trials", json=trial)
    return ODD_JOB


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with chromium() as driver:
        yield driver


def visit(driver: webdriver.Chrome, url: str) -> None:
    """Open ``url`` with the browser's logs drained, so checks see this page only."""
    requested_urls(driver)
    console_errors(driver)
    driver.get(url)


def api(server: Server, path: str, **params: Any) -> Any:
    response = httpx.get(server.base_url + path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def all_trials(server: Server, job_id: str) -> list[TrialRead]:
    page = api(server, f"/jobs/{quote(job_id, safe='')}/trials", limit=500)
    assert page["next_after"] is None
    return [TrialRead.model_validate(t) for t in page["items"]]


def text(driver: webdriver.Chrome, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def test_the_jobs_list_shows_stage_trials_best_batch_size_min_cost_and_savings(
    server: Server, browser: webdriver.Chrome, job_id: str, odd_job: str
) -> None:
    visit(browser, server.base_url + "/dashboard")
    job = api(server, f"/jobs/{job_id}")
    savings = estimate_savings(all_trials(server, job_id), job["default_batch_size"])
    rows = {
        r.get_attribute("data-job-id"): r
        for r in browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")
    }
    assert {job_id, odd_job} <= set(rows)
    cells = [c.text for c in rows[job_id].find_elements(By.TAG_NAME, "td")]
    assert cells[:4] == [job_id, "MAB", "zeus", str(job["num_trials"])]
    assert cells[6] == str(job["min_cost_batch_size"])
    assert cells[7] == joules(job["min_cost"])
    assert savings.saved is not None
    assert cells[8] == f"{joules(savings.saved)} ({percent(savings.fraction)})"
    assert "How savings are estimated" in browser.page_source
    assert_offline_and_clean(browser)


def test_a_job_id_with_reserved_characters_links_to_its_own_page(
    server: Server, browser: webdriver.Chrome, odd_job: str
) -> None:
    visit(browser, server.base_url + "/dashboard")
    (row,) = [
        r
        for r in browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")
        if r.get_attribute("data-job-id") == odd_job
    ]
    link = row.find_element(By.TAG_NAME, "a")
    assert link.text == odd_job  # shown as text, not markup
    link.click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "job-id"))
    assert text(browser, "#job-id") == odd_job
    assert browser.current_url.endswith("/dashboard/jobs/" + quote(odd_job, safe=""))
    assert text(browser, "#num-trials") == "1"
    assert_offline_and_clean(browser)


def chart_points(driver: webdriver.Chrome, canvas_id: str) -> list[dict[str, Any]]:
    """The points of every dataset of the Chart.js chart on ``canvas_id``."""
    points: list[dict[str, Any]] = driver.execute_script(
        "const chart = Chart.getChart(arguments[0]);"
        "return chart.data.datasets.flatMap(d => d.data.map(p => ({...p, label: d.label})));",
        canvas_id,
    )
    return points


def painted_pixels(driver: webdriver.Chrome, canvas_id: str) -> int:
    count: int = driver.execute_script(
        "const c = document.getElementById(arguments[0]);"
        "const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < px.length; i += 4) { if (px[i] > 0) n++; } return n;",
        canvas_id,
    )
    return count


def test_the_job_page_draws_the_simulated_jobs_trials_and_arms(
    server: Server, browser: webdriver.Chrome, job_id: str, tmp_path: Path
) -> None:
    visit(browser, server.base_url + "/dashboard/jobs/" + quote(job_id, safe=""))
    job = api(server, f"/jobs/{job_id}")
    trials = all_trials(server, job_id)
    arms = api(server, f"/jobs/{job_id}/arms")
    assert text(browser, "#job-id") == job_id
    assert text(browser, "#stage") == "MAB"
    assert text(browser, "#num-trials") == str(len(trials)) == str(job["num_trials"])
    assert text(browser, "#best-batch-size") == str(job["min_cost_batch_size"])

    # The data embedded in the page is the job's trials, marked by outcome.
    embedded = browser.execute_script(
        "return JSON.parse(document.getElementById('dashboard-data').textContent);"
    )
    expected = [
        {"trial_number": t.trial_number, "batch_size": t.batch_size, "type": t.type,
         "cost": t.cost, "outcome": outcome(t)}
        for t in trials
    ]  # fmt: skip
    assert embedded["trials"] == expected
    outcomes = {e["outcome"] for e in expected}
    assert {"converged", "early-stopped", "failed"} <= outcomes

    # The charts hold exactly those points, and are painted.
    sizes = job["batch_sizes"]
    drawn = sorted((p["x"], sizes[p["y"]]) for p in chart_points(browser, "batch-size-chart"))
    assert drawn == [(t.trial_number, t.batch_size) for t in trials]
    costs = [p for p in chart_points(browser, "cost-chart") if "batch_size" in p]
    assert sorted((p["x"], p["y"]) for p in costs) == [
        (t.trial_number, t.cost) for t in trials if t.cost is not None
    ]
    means = browser.execute_script(
        "const c = Chart.getChart('arms-chart'); return [c.data.labels, c.data.datasets[1].data];"
    )
    assert means == [[str(a["batch_size"]) for a in arms], [-a["param_mean"] for a in arms]]
    for canvas in ("batch-size-chart", "cost-chart", "arms-chart"):
        assert painted_pixels(browser, canvas) > 1000, canvas

    # Failed and early-stopped trials are marked in the table.
    marked = {
        int(row.get_attribute("data-trial-number") or 0): row.get_attribute("class")
        for row in browser.find_elements(By.CSS_SELECTOR, "#trials tbody tr")
    }
    assert marked == {e["trial_number"]: e["outcome"] for e in expected}
    # No trial runs, so the page does not reload itself.
    assert not browser.find_elements(By.CSS_SELECTOR, "meta[http-equiv=refresh]")
    assert_offline_and_clean(browser)

    height = browser.execute_script("return document.documentElement.scrollHeight;")
    browser.set_window_size(1280, min(int(height) + 140, 2600))  # + the window's frame
    png = base64.b64decode(browser.get_screenshot_as_base64())
    browser.set_window_size(1280, 1400)
    assert png.startswith(b"\x89PNG")
    (tmp_path / "dashboard.png").write_bytes(png)
    if os.environ.get("BSO_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(png)


@pytest.fixture(scope="module")
def group(server: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A job group of two GPUs, made by a simulated run (squad on a40 and v100)."""
    simulate = subprocess.run(
        bso_args(
            "simulate", "--url", server.base_url, "-w", "squad", "--gpu", "a40,v100",
            "--sharing", "group", "-n", "12",
        ),
        env=clean_env(),
        cwd=tmp_path_factory.mktemp("simulate-group"),
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert simulate.returncode == 0, simulate.stdout + simulate.stderr
    jobs = [
        job
        for gpu in ("a40", "v100")
        for job in api(server, "/jobs", job_id_prefix=f"sim-squad-{gpu}")["items"]
    ]
    (name,) = {j["group"] for j in jobs}
    assert len(jobs) == 2 and name is not None
    return str(name)


def table(driver: webdriver.Chrome, css: str, key: str) -> dict[str, list[str]]:
    """The rows of a table, by their ``data-`` attribute: each cell's text."""
    return {
        str(r.get_attribute(key)): [c.text for c in r.find_elements(By.TAG_NAME, "td")]
        for r in driver.find_elements(By.CSS_SELECTOR, f"{css} tbody tr")
    }


def test_the_group_page_shows_what_its_jobs_share_and_links_both_ways(
    server: Server, browser: webdriver.Chrome, group: str
) -> None:
    visit(browser, server.base_url + "/dashboard")
    jobs = table(browser, "#jobs", "data-job-id")
    grouped = sorted(j for j, cells in jobs.items() if cells[-1] == group)
    assert len(grouped) == 2

    body = api(server, f"/groups/{group}")
    visit(browser, server.base_url + "/dashboard/groups/" + quote(group, safe=""))
    assert text(browser, "#group-name") == group
    assert text(browser, "#max-epochs") == str(body["max_epochs"])
    shared = table(browser, "#group-batch-sizes", "data-batch-size")
    assert shared == {
        str(b["batch_size"]): [
            str(b["batch_size"]), str(b["runs"]), str(b["exhausted"]),
            "yes" if b["never_converged"] else "no", str(b["converged"]),
            "-" if b["min_epochs"] is None else str(b["min_epochs"]),
            "-" if b["mean_epochs"] is None else f"{b['mean_epochs']:.1f}",
        ]
        for b in body["batch_sizes"]
    }  # fmt: skip
    assert sum(b["converged"] for b in body["batch_sizes"]) >= 12  # one per recurrence
    members = table(browser, "#members", "data-job-id")
    assert sorted(members) == grouped
    for m in body["members"]:
        assert members[m["job_id"]] == [
            m["job_id"], f"{m['number_of_gpus']} \u00d7 {m['gpu_model']}", m["policy"], m["stage"],
            str(m["num_trials"]), str(m["best_batch_size"]), joules(m["min_cost"]),
        ]  # fmt: skip
    assert_offline_and_clean(browser)

    # A member's link opens its job page, whose group links back here.
    browser.find_element(By.CSS_SELECTOR, f'#members tr[data-job-id="{grouped[0]}"] a').click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "job-id"))
    assert text(browser, "#job-id") == grouped[0]
    assert text(browser, "#group") == group
    browser.find_element(By.CSS_SELECTOR, "#group a").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "group-name"))
    assert browser.current_url.endswith("/dashboard/groups/" + quote(group, safe=""))
    assert_offline_and_clean(browser)


def test_swagger_ui_shows_every_operation_with_nothing_from_another_host(
    server: Server, browser: webdriver.Chrome
) -> None:
    spec = api(server, "/openapi.json")
    operations = sum(len(methods) for methods in spec["paths"].values())
    visit(browser, server.base_url + "/docs")
    WebDriverWait(browser, 15).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) == operations
    )
    paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/jobs", "/jobs/batch_size", "/report", "/trials"} <= paths
    urls = assert_offline_and_clean(browser)
    assert any(u.endswith("/static/vendor/swagger-ui/swagger-ui-bundle.js") for u in urls)


def test_redoc_renders_with_its_packaged_fonts_and_nothing_from_another_host(
    server: Server, browser: webdriver.Chrome
) -> None:
    visit(browser, server.base_url + "/redoc")
    WebDriverWait(browser, 20).until(
        lambda d: "Register a job" in d.find_element(By.TAG_NAME, "body").text
    )
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Batch Size Optimizer" in body and "Report an epoch's cumulative result" in body
    WebDriverWait(browser, 10).until(
        lambda d: d.execute_script("return document.fonts.status === 'loaded';")
    )
    urls = assert_offline_and_clean(browser)
    assert any("/static/vendor/fonts/montserrat-latin-" in u for u in urls)
    assert any("/static/vendor/redoc/redoc.standalone.js" in u for u in urls)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A server with BSO_AUTH=required, and a viewer token from `bso tokens create`."""
    folder = tmp_path_factory.mktemp("dashboard-auth")
    env = clean_env(
        BSO_DATABASE_URL=f"sqlite:///{folder / 'bso.db'}",
        BSO_LOG_LEVEL="WARNING",
        BSO_AUTH="required",
    )
    subprocess.run(bso_args("migrate"), env=env, cwd=folder, check=True, capture_output=True)
    created = subprocess.run(
        bso_args("tokens", "create", "wall-screen", "--role", "viewer"),
        env=env, cwd=folder, check=True, capture_output=True, text=True,
    )  # fmt: skip
    port = free_port()
    with running_server(
        bso_args("serve", "--port", str(port)), port=port, env=env, log_dir=folder, cwd=folder
    ) as running:
        yield running, created.stdout.splitlines()[-1]


def test_a_browser_answers_the_basic_challenge_with_a_viewer_token(
    auth_server: tuple[Server, str], browser: webdriver.Chrome
) -> None:
    # Chromium sends URL credentials only after a 401 whose challenges it
    # understands, as it does with a prompt: this fails if Basic is not
    # offered on a WWW-Authenticate line of its own.
    server, token = auth_server
    host = server.base_url.removeprefix("http://")
    visit(browser, f"http://wall:{token}@{host}/dashboard")
    WebDriverWait(browser, 10).until(lambda d: "No jobs yet" in text(d, "body"))
    assert browser.title.startswith("Jobs")
    urls = assert_offline_and_clean(browser)  # its CSS and script came with the credentials
    assert any(u.endswith("/static/dashboard.css") for u in urls)
