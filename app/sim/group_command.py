"""``bso simulate`` with several GPUs: one recurring job across GPU types (app.sim.groups).

Called by :mod:`app.cli.simulate` when ``--gpu`` names several GPUs or
``--sharing`` / ``--before`` is given. Prints a table (mean cost / oracle per
GPU and overall) or, with ``--json``, every counted recurrence.
"""

from __future__ import annotations

import asyncio
import json
import statistics
from collections.abc import Sequence

import typer
from rich.console import Console
from rich.table import Table

from app.sim.engines import open_engine
from app.sim.groups import (
    DEFAULT_RECURRENCES,
    GroupPlan,
    GroupResult,
    Perturbation,
    Sharing,
    parse_before,
    replay_group,
)
from app.sim.results import ReplaySettings
from app.sim.traces import GPUS, WORKLOADS, TraceError, Workload, find_workload
from app.urls import redact_url


def parse_gpus(text: str) -> tuple[str, ...]:
    gpus = tuple(dict.fromkeys(g.strip().lower() for g in text.split(",") if g.strip()))
    unknown = [g for g in gpus if g not in GPUS]
    if not gpus or unknown:
        raise typer.BadParameter(
            f"Unknown GPU {unknown or text!r}; choose from: {', '.join(GPUS)}."
        )
    return gpus


async def _replay(
    workloads: Sequence[Workload],
    settings: ReplaySettings,
    plan: GroupPlan,
    pure: bool,
    url: str | None,
    token: str | None,
    power_limit: int | None,
) -> list[GroupResult]:
    async with open_engine(url, pure=pure, token=token) as engine:
        return [
            await replay_group(engine, w, settings, plan, power_limit=power_limit)
            for w in workloads
        ]


def _table(results: Sequence[GroupResult], title: str) -> Table:
    table = Table(title=title)
    for name in ("workload", "recurrences", "cost/oracle", *(f"{g}: n, cost/oracle" for g in GPUS)):
        table.add_column(name, justify="left" if name == "workload" else "right")
    for r in results:
        cells = [r.workload.dataset, str(len(r.recurrences))]
        mean = r.mean_over_oracle
        cells.append("-" if mean is None else f"{mean:.3f}")
        for gpu in GPUS:
            on = [x.over_oracle for x in r.recurrences if x.gpu == gpu]
            cells.append(f"{len(on)}, {statistics.fmean(on):.3f}" if on else "-")
        table.add_row(*cells)
    return table


def simulate_group(
    *,
    workload: str,
    everything: bool,
    gpu: str,
    sharing: Sharing,
    before: Sequence[str],
    perturb: Perturbation,
    settings: ReplaySettings,
    pure: bool,
    url: str | None,
    token: str | None,
    power_limit: int | None,
    json_output: bool,
) -> None:
    """Replay the group plan for one workload (or all) and print the outcome."""
    try:
        workloads = list(WORKLOADS) if everything else [find_workload(workload)]
        plan = GroupPlan(
            parse_gpus(gpu), sharing, parse_before(before, GPUS),
            settings.recurrences or DEFAULT_RECURRENCES,
            perturb,
        )  # fmt: skip
    except (TraceError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    results = asyncio.run(_replay(workloads, settings, plan, pure, url, token, power_limit))
    kind = redact_url(url) if url is not None else "pure" if pure else "service"  # printed
    if json_output:
        body = {"engine": kind, "cases": [r.to_dict() for r in results]}
        typer.echo(json.dumps(body, indent=2))
    else:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)
        title = (
            f"bso simulate ({kind} engine; GPUs {','.join(plan.gpus)}; sharing {plan.sharing}; "
            f"eta {settings.eta_knob}; policy {settings.policy}; seed {settings.seed})"
        )
        console.print(_table(results, title))
        console.print(
            "cost/oracle: mean over counted recurrences of their cost (every try) over the "
            "expected cost per recurrence of the best batch size on their GPU."
        )
        for r in results:
            tries = " | ".join(
                f"{x.gpu} {tries_text(x.batch_sizes, x.converged)}" for x in r.recurrences
            )
            console.print(f"[bold]{r.workload.dataset}[/bold]: {tries}")
            if r.error:
                console.print(f"  [red]error[/red]: {r.error}")
    if any(r.error for r in results):
        raise typer.Exit(1)


def tries_text(batch_sizes: Sequence[int], converged: Sequence[bool]) -> str:
    """A recurrence's tries; ``!`` marks one that did not converge."""
    return " ".join(
        f"{bs}{'' if ok else '!'}" for bs, ok in zip(batch_sizes, converged, strict=True)
    )
