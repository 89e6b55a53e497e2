"""``bso jobs list`` and ``bso jobs show JOB_ID``: a running server's jobs, for operators.

A thin client of the read API (GET /jobs, /jobs/{id}, /jobs/{id}/trials,
/jobs/{id}/arms) over HTTP, so it works against any replica and never needs
the database's credentials. ``--token`` is sent as ``Authorization: Bearer``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.table import Table

from app.urls import redact_url

DEFAULT_URL = "http://127.0.0.1:8000"
PAGE = 500  # the read API's largest page

jobs = typer.Typer(
    name="jobs",
    help="Read jobs, trials and arms from a running server.",
    no_args_is_help=True,
)

Url = Annotated[
    str, typer.Option("--url", envvar="BSO_URL", help="The server [BSO_URL].", show_default=True)
]
Token = Annotated[
    str | None,
    typer.Option("--token", envvar="BSO_TOKEN", help="Sent as a Bearer token [BSO_TOKEN]."),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the server's JSON instead.")]


def client(url: str, token: str | None) -> httpx.Client:
    """An HTTP client for the server, authenticated when a token is given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=30.0)


def _get(http: httpx.Client, path: str, **params: Any) -> Any:
    """GET a JSON answer, or exit 1 with a message an operator can act on."""
    query = {name: value for name, value in params.items() if value is not None}
    try:
        response = http.get(path, params=query)
    except httpx.TransportError as exc:
        _fail(f"cannot reach the server at {redact_url(str(http.base_url))}: {exc}")
    if response.status_code in (401, 403):
        _fail(f"{response.status_code} {_message(response)} (check --token / BSO_TOKEN)")
    if response.status_code != 200:
        _fail(f"{response.status_code} {_message(response)}")
    return response.json()


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def _fail(message: str) -> Any:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _pages(http: httpx.Client, path: str, **params: Any) -> Iterator[dict[str, Any]]:
    """Every item of a paged list, following ``next_after``."""
    after = None
    while True:
        page = _get(http, path, limit=PAGE, after=after, **params)
        yield from page["items"]
        after = page["next_after"]
        if after is None:
            return


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _console() -> Console:
    return Console(soft_wrap=False, width=200, highlight=False)


@jobs.command("list")
def list_jobs(
    url: Url = DEFAULT_URL,
    token: Token = None,
    prefix: Annotated[str | None, typer.Option(help="Only jobs with this job_id_prefix.")] = None,
    as_json: AsJson = False,
) -> None:
    """Every job: stage, trials so far, best batch size and its cost."""
    with client(url, token) as http:
        items = list(_pages(http, "/jobs", job_id_prefix=prefix))
    if as_json:
        typer.echo(json.dumps(items, indent=2))
        return
    table = Table(
        "JOB ID", "STAGE", "POLICY", "GROUP", "TRIALS", "BEST BATCH SIZE", "MIN COST", "CREATED"
    )
    for job in items:
        table.add_row(
            job["job_id"],
            job["stage"],
            str(job.get("policy", "-")),  # a server from before policies: none
            str(job.get("group") or "-"),  # none, or a server from before groups
            str(job["num_trials"]),
            str(job["min_cost_batch_size"]),
            _number(job["min_cost"]),
            job["created_at"],
        )
    _console().print(table)
    typer.echo(f"{len(items)} job(s)")


@jobs.command("show")
def show_job(
    job_id: Annotated[str, typer.Argument(help="The job.")],
    url: Url = DEFAULT_URL,
    token: Token = None,
    last: Annotated[
        int, typer.Option(min=0, help="Show only the last N trials (0: all of them).")
    ] = 0,
    as_json: AsJson = False,
) -> None:
    """A job's configuration, its bandit arms and its trials."""
    path = f"/jobs/{quote(job_id, safe='')}"
    with client(url, token) as http:
        job = _get(http, path)
        arms = _get(http, f"{path}/arms")
        trials = list(_pages(http, f"{path}/trials"))
    if last:
        trials = trials[-last:]
    if as_json:
        typer.echo(json.dumps({"job": job, "arms": arms, "trials": trials}, indent=2))
        return
    console = _console()
    console.print(_job_table(job))
    console.print(_arms_table(arms, job))
    console.print(_trials_table(trials))


def _job_table(job: dict[str, Any]) -> Table:
    table = Table("FIELD", "VALUE", title=f"Job {job['job_id']}", title_justify="left")
    rows = {
        "stage": job["stage"],
        "policy": job.get("policy", "-"),
        "group": job.get("group") or "-",
        "trials": job["num_trials"],
        "best batch size": job["min_cost_batch_size"],
        "min cost": _number(job["min_cost"]),
        "batch sizes": ", ".join(map(str, job["batch_sizes"])),
        "default batch size": job["default_batch_size"],
        "eta_knob / beta_knob": f"{job['eta_knob']} / {job['beta_knob']}",
        "target metric": f"{job['target_metric']} "
        f"({'higher' if job['higher_is_better_metric'] else 'lower'} is better)",
        "max epochs": job["max_epochs"],
        "pruning rounds": job["num_pruning_rounds"],
        "gpu": f"{job['number_of_gpus']} x {job['gpu_model']} at {job['max_power']} W",
        "created / updated": f"{job['created_at']} / {job['updated_at']}",
    }
    if job.get("exploration"):
        progress = job["exploration"]
        rows["pruning round"] = (
            f"{progress['round']} (candidates {', '.join(map(str, progress['candidates']))})"
        )
    for name, value in rows.items():
        table.add_row(name, str(value))
    return table


def _arms_table(arms: list[dict[str, Any]], job: dict[str, Any]) -> Table:
    title = "Arms (bandit stage)" if arms else "Arms: none yet (the job is still pruning)"
    table = Table(
        "BATCH SIZE", "MEAN COST", "PRECISION", "OBSERVATIONS", title=title, title_justify="left"
    )
    for arm in arms:
        best = " *" if arm["batch_size"] == job["min_cost_batch_size"] else ""
        precision = arm["param_precision"]
        table.add_row(
            f"{arm['batch_size']}{best}",
            _number(-arm["param_mean"]),  # the reward is -cost
            "inf" if precision is None else _number(precision),
            str(arm["num_observations"]),
        )
    return table


def _trials_table(trials: list[dict[str, Any]]) -> Table:
    table = Table(
        "TRIAL", "BATCH SIZE", "TYPE", "STATUS", "CONVERGED", "TIME S", "ENERGY J", "COST",
        "STARTED", title=f"Trials ({len(trials)} shown)", title_justify="left",
    )  # fmt: skip
    for trial in trials:
        converged = trial["converged"]
        table.add_row(
            str(trial["trial_number"]),
            str(trial["batch_size"]),
            trial["type"],
            trial["status"],
            "-" if converged is None else ("yes" if converged else "no"),
            _number(trial["time"]),
            _number(trial["energy"]),
            _number(trial["cost"]),
            trial["start_timestamp"],
        )
    return table


def register(cli: typer.Typer) -> None:
    """Add ``bso jobs`` to the ``bso`` command."""
    cli.add_typer(jobs)
