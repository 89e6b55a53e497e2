"""/dashboard, /dashboard/jobs/{job_id} and /dashboard/groups/{group}: read-only pages.

Auth hook (issue 7): the router takes the read API's router-level
dependencies, and each page takes ``DatabaseDep`` like the read endpoints, so
whatever guards GET /jobs (a viewer token) guards the dashboard too.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse

from app.dashboard import views
from app.dashboard.render import render
from app.dashboard.views import group_view, job_view, jobs_view
from app.errors import GroupNotFoundError, JobNotFoundError
from app.http.docs_ui import root_path
from app.http.routes import DatabaseDep, JobIdPath, read
from app.schemas import PRINTABLE

REFRESH_S = 5  # while a trial runs, the page reloads itself this often

dashboard = APIRouter(
    prefix="/dashboard",
    include_in_schema=False,
    dependencies=read.dependencies,  # auth hook: the same guard as the read API
)


def _page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render a page; its links are below the proxy prefix, if any."""
    prefix = root_path(request)
    links = {"root": prefix, "base": f"{prefix}/dashboard", "static": f"{prefix}/static"}
    html = render(template, **{"refresh": None, **links, **context})
    return HTMLResponse(html, status_code=status_code)


@dashboard.get("", response_class=HTMLResponse)
async def jobs_list(
    request: Request,
    db: DatabaseDep,
    after: Annotated[str | None, Query(max_length=256, pattern=PRINTABLE)] = None,
) -> HTMLResponse:
    """Every job: stage, trials, best batch size, min cost and estimated savings."""
    view = await jobs_view(db, after=after)
    return _page(
        request,
        "jobs.html",
        view=view,
        refresh=REFRESH_S if any(row.running for row in view.rows) else None,
        after=after,
        per_page=views.JOBS_PER_PAGE,
        window=views.TRIAL_WINDOW,
    )


@dashboard.get("/jobs/{job_id:path}", response_class=HTMLResponse)
async def job_page(request: Request, job_id: JobIdPath, db: DatabaseDep) -> HTMLResponse:
    """One job: its trials, pruning outcome, arms and what it does now."""
    try:
        view = await job_view(db, job_id)
    except JobNotFoundError as exc:
        return _page(request, "missing.html", status_code=404, message=str(exc))
    return _page(
        request,
        "job.html",
        view=view,
        refresh=REFRESH_S if view.running else None,
        window=views.TRIAL_WINDOW,
        chart_data=view.chart_data(),
    )


@dashboard.get("/groups/{group:path}", response_class=HTMLResponse)
async def group_page(
    request: Request,
    group: Annotated[str, Path(min_length=1, max_length=256, pattern=PRINTABLE)],
    db: DatabaseDep,
    after: Annotated[str | None, Query(max_length=256, pattern=PRINTABLE)] = None,
) -> HTMLResponse:
    """One job group: what its jobs share per batch size, and each job's GPU and stage."""
    try:
        view = await group_view(db, group, after=after)
    except GroupNotFoundError as exc:
        return _page(request, "missing.html", status_code=404, message=str(exc))
    return _page(request, "group.html", view=view, after=after)
