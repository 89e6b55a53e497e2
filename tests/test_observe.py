"""The request middleware and the log formats, in process and without a database."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import OperationalError

from app.config import Settings
from app.http.app import create_app
from app.telemetry import metrics
from app.telemetry.context import RequestInfo, bind_job, enter, leave
from app.telemetry.log import JsonFormatter, TextFormatter
from tests.support.server import REPO_ROOT


@pytest.fixture(scope="module")
def bare_app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """The real app, no lifespan, plus routes that fail the way a database does."""
    folder = tmp_path_factory.mktemp("observe")
    (folder / "app.js").write_text("// vendored asset")
    application = create_app(Settings(database_url=f"sqlite+aiosqlite:///{folder}/unused.db"))
    application.mount("/assets", StaticFiles(directory=folder))

    @application.get("/test/unavailable")
    async def unavailable() -> None:
        raise ConnectionRefusedError("database down")

    @application.get("/test/busy")
    async def busy() -> None:
        # What SQLAlchemy raises when SQLite's busy timeout runs out.
        locked = sqlite3.OperationalError("database is locked")
        locked.sqlite_errorcode = sqlite3.SQLITE_BUSY
        raise OperationalError("UPDATE job ...", {}, locked)

    @application.get("/test/bug")
    async def bug() -> None:
        raise RuntimeError("a bug")

    return application


@pytest.fixture
async def http(bare_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # The error middleware re-raises after answering (so servers log it): keep the answer.
    transport = httpx.ASGITransport(app=bare_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    ("path", "status", "kind"),
    [
        ("/test/unavailable", 503, "unavailable"),
        ("/test/busy", 503, "busy"),
        ("/test/bug", 500, None),
    ],
)
async def test_answers_of_the_catch_all_handler_are_stamped_counted_and_timed(
    http: httpx.AsyncClient, path: str, status: int, kind: str | None
) -> None:
    errors = {k: value("bso_database_errors_total", kind=k) for k in ("busy", "unavailable")}
    labels = {"method": "GET", "route": path, "status": str(status)}
    requests = value("bso_http_requests_total", **labels)
    response = await http.get(path, headers={"X-Request-ID": "err-1"})
    assert response.status_code == status
    assert response.headers["x-request-id"] == "err-1"
    assert "Traceback" not in response.text and "database down" not in response.text
    assert value("bso_http_requests_total", **labels) == requests + 1
    assert value("bso_http_request_duration_seconds_count", **labels) == requests + 1
    for k, before in errors.items():
        assert value("bso_database_errors_total", kind=k) == before + (k == kind)


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/docs", "/docs"),
        ("/openapi.json", "/openapi.json"),
        ("/assets/app.js", "/assets"),
        ("/assets/missing.js", "/assets"),
        ("/nothing/here", "unmatched"),
    ],
)
async def test_routes_outside_fastapi_routing_get_their_template_or_unmatched(
    http: httpx.AsyncClient, path: str, route: str
) -> None:
    response = await http.get(path)
    labels = {"method": "GET", "route": route, "status": str(response.status_code)}
    before = value("bso_http_requests_total", **labels)
    await http.get(path)
    assert value("bso_http_requests_total", **labels) == before + 1


# ------------------------------------------------------------------ log formats


def record(message: str, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("app.test", logging.INFO, __file__, 1, message, None, None)
    made.__dict__.update(extra)
    return made


def test_json_lines_carry_the_request_its_job_and_the_request_fields() -> None:
    scope = {"type": "http", "path_params": {}, "query_string": b"job_id=q-job&x=1"}
    token = enter(RequestInfo("rid-1", scope))
    try:
        line = json.loads(JsonFormatter().format(record("hello", route="/r", status=200)))
        bind_job("body-job")
        bound = json.loads(JsonFormatter().format(record("again")))
    finally:
        leave(token)
    outside = json.loads(JsonFormatter().format(record("outside")))
    assert {k: line[k] for k in ("level", "logger", "message", "request_id", "job_id")} == {
        "level": "INFO", "logger": "app.test", "message": "hello", "request_id": "rid-1",
        "job_id": "q-job",
    }  # fmt: skip
    assert (line["route"], line["status"]) == ("/r", 200) and line["time"].startswith("20")
    assert bound["job_id"] == "body-job"
    assert outside["request_id"] is None and "job_id" not in outside


def test_a_traceback_stays_inside_one_json_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        failing = record("failed", exc_info=sys.exc_info())
    text = JsonFormatter().format(failing)
    assert "\n" not in text
    assert "ValueError: boom" in json.loads(text)["exception"]


def test_text_lines_name_the_request_when_there_is_one() -> None:
    token = enter(RequestInfo("rid-2", {"type": "http", "path_params": {"job_id": "p-job"}}))
    try:
        access = TextFormatter().format(record("GET /jobs/p-job 404 1.0ms", route="/jobs/{job_id}"))
        other = TextFormatter().format(record("something"))
    finally:
        leave(token)
    assert access.endswith("route=/jobs/{job_id} job_id=p-job request_id=rid-2"), access
    assert other.endswith("something request_id=rid-2"), other
    assert TextFormatter().format(record("plain")).endswith("app.test: plain")


def test_the_bso_command_does_not_import_prometheus_client_before_serve_sets_it_up() -> None:
    # prometheus-client fixes its mode at import: PROMETHEUS_MULTIPROC_DIR must come first.
    code = "import sys, app.cli.main; assert 'prometheus_client' not in sys.modules, 'imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(REPO_ROOT), capture_output=True)
    assert result.returncode == 0, result.stderr.decode()


# Counts the spans FastAPI starts; set as OpenTelemetry's global provider
# before or after the app is built (a provider is set once per process).
_SPANS_SCRIPT = """
import asyncio, json, sys
import httpx
from opentelemetry import trace
from app.config import Settings
from app.http.app import create_app

spans = []

class Tracer(trace.NoOpTracer):
    def start_span(self, name, *args, **kwargs):
        spans.append(name)
        return trace.INVALID_SPAN

class Provider(trace.TracerProvider):
    def get_tracer(self, *args, **kwargs):
        return Tracer()

async def main(when):
    if when == "before":
        trace.set_tracer_provider(Provider())
    app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:"))
    if when == "after":
        trace.set_tracer_provider(Provider())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/healthz")).status_code == 200
    print(json.dumps(spans))

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.parametrize(
    ("when", "expected"),
    [("before", ["GET"]), ("after", [])],
    ids=["set-up-before-the-app-is-built", "not-set-up-when-it-is-built"],
)
def test_fastapi_opentelemetry_is_on_only_where_set_up_when_the_app_is_built(
    when: str, expected: list[str]
) -> None:
    # Off, FastAPI skips asking OpenTelemetry for its providers on every
    # request (app/telemetry/otel.py); set up, its request spans are kept.
    done = subprocess.run(
        [sys.executable, "-c", _SPANS_SCRIPT, when],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    spans = json.loads(done.stdout.strip().splitlines()[-1])
    assert spans[:1] == expected  # the request's span (then FastAPI's operation spans)
