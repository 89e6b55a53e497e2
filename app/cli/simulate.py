"""The ``bso simulate`` command: replay recurring jobs from the traces and summarise.

``register(cli)`` adds the command to the ``bso`` Typer app. It builds the cases
(:mod:`app.sim.traces`), picks the engine (the service in-process by default,
a running server with ``--url``, the pure algorithm with ``--engine pure``),
replays every case with a progress bar, then prints a summary table or JSON
and optionally draws plots (matplotlib is imported only then).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from app.bandit import Policy
from app.cli.jobs import Token
from app.sim.engines import open_engine
from app.sim.group_command import simulate_group  # --- job groups (issue 13)
from app.sim.groups import Perturbation, Sharing  # --- job groups (issue 13)
from app.sim.replay import replay
from app.sim.results import CaseResult, MetricCurve, ReplaySettings
from app.sim.summary import render_summary
from app.sim.traces import GPUS, Case, TraceError, all_cases, build_case, find_workload
from app.urls import redact_url


class EngineKind(StrEnum):
    """Which optimiser answers the simulated training scripts."""

    SERVICE = "service"
    PURE = "pure"


def register(cli: typer.Typer) -> None:
    """Add ``simulate`` to the ``bso`` command."""
    cli.command("simulate")(simulate)


def _cases(workload: str, gpu: str, everything: bool, power_limit: int | None) -> list[Case]:
    try:
        if everything:
            return all_cases(power_limit=power_limit)
        gpu = gpu.strip().lower()
        if gpu not in GPUS:
            raise TraceError(f"Unknown GPU {gpu!r}; choose one of: {', '.join(GPUS)}.")
        return [build_case(find_workload(workload), gpu, power_limit=power_limit)]
    except TraceError as exc:
        raise typer.BadParameter(str(exc)) from exc


async def _replay_all(
    cases: Sequence[Case],
    settings: ReplaySettings,
    kind: EngineKind,
    url: str | None,
    token: str | None,
    console: Console,
) -> list[CaseResult]:
    results = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        async with open_engine(url, pure=kind is EngineKind.PURE, token=token) as engine:
            for case in cases:
                task = progress.add_task(case.name, total=settings.recurrences_for(case))

                def advance(done: int, task: TaskID = task) -> None:
                    progress.update(task, completed=done)

                results.append(await replay(engine, case, settings, on_recurrence=advance))
    return results


def _json(results: Sequence[CaseResult], kind: str) -> str:
    return json.dumps({"engine": kind, "cases": [r.to_dict() for r in results]}, indent=2)


def simulate(
    workload: Annotated[
        str,
        typer.Option("--workload", "-w", help="Dataset of the workload (e.g. squad, imagenet)."),
    ] = "librispeech",
    gpu: Annotated[
        str,
        typer.Option(
            "--gpu",
            "-g",
            help=f"GPU trace: {', '.join(GPUS)}; several, comma-separated: each recurrence "
            "lands on one of them (seeded), one job per GPU type.",
        ),
    ] = "v100",
    everything: Annotated[bool, typer.Option("--all", help="Every workload on every GPU.")] = False,
    engine: Annotated[
        EngineKind,
        typer.Option(help="service: this service in-process (SQLite); pure: no service."),
    ] = EngineKind.SERVICE,
    url: Annotated[
        str | None, typer.Option(help="A running server (this one or Zeus's) instead.")
    ] = None,
    token: Token = None,
    eta: Annotated[float, typer.Option(min=0.0, max=1.0, help="eta_knob: energy vs time.")] = 0.5,
    beta: Annotated[
        float, typer.Option(min=0.0, help="beta_knob: early-stop at beta x min cost.")
    ] = 2.0,
    no_early_stop: Annotated[
        bool, typer.Option("--no-early-stop", help="Send beta_knob null (no early stopping).")
    ] = False,
    window_size: Annotated[int, typer.Option(min=0, help="Bandit window (0: all history).")] = 0,
    policy: Annotated[
        Policy,
        typer.Option(
            help="zeus: the paper's algorithm; predictive: stops doomed runs sooner. Sent as "
            "the jobs' policy (a Zeus server ignores it and runs zeus)."
        ),
    ] = Policy.ZEUS,
    metric_curve: Annotated[
        MetricCurve,
        typer.Option(help="How the metric nears the target: linear, or concave (fast, then flat)."),
    ] = MetricCurve.LINEAR,
    seed: Annotated[int, typer.Option(help="The job's mab_seed and the path sampling seed.")] = 1,
    recurrences: Annotated[
        int | None, typer.Option("--recurrences", "-n", min=1, help="Default: 2 x |B| x |P|.")
    ] = None,
    power_limit: Annotated[
        int | None, typer.Option(help="Watts; default: the GPU's maximum in the trace.")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print JSON results instead.")
    ] = False,
    plot: Annotated[
        Path | None, typer.Option(help="Draw cost and batch size per recurrence to this PNG.")
    ] = None,
    # --- job groups (issue 13): several GPUs, one job per GPU type
    sharing: Annotated[
        Sharing | None,
        typer.Option(
            help="With several GPUs (default group): group, the jobs form one job group; "
            "separate, each learns alone."
        ),
    ] = None,
    before: Annotated[
        list[str] | None,
        typer.Option(help="GPU:N: N uncounted recurrences on that GPU first (a warm start)."),
    ] = None,
    perturb: Annotated[
        Perturbation,
        typer.Option(help="With several GPUs: epochs to the target x0.8-1.25 or +-1 per GPU."),
    ] = Perturbation.NONE,
    # --- end of job groups
) -> None:
    """Replay recurring training jobs from the Zeus NSDI'23 traces through the optimizer.

    Each recurrence asks for a batch size, trains along a training path sampled
    from the traces (reporting after every epoch and obeying stop_train), and
    retries up to 20 times until it converges; every try's cost counts.
    Baselines: always the default batch size, and the oracle (the single batch
    size with the lowest expected cost in hindsight).
    """
    if url is not None and engine is EngineKind.PURE:
        raise typer.BadParameter("--url talks to a server; it cannot go with --engine pure.")
    if beta <= 0 and not no_early_stop:
        raise typer.BadParameter("--beta must be > 0 (or use --no-early-stop).")
    settings = ReplaySettings(
        eta_knob=eta,
        beta_knob=None if no_early_stop else beta,
        window_size=window_size,
        seed=seed,
        recurrences=recurrences,
        policy=policy,
        metric_curve=metric_curve,
    )
    # --- job groups (issue 13): several GPUs, --sharing or --before
    if "," in gpu or sharing is not None or before or perturb is not Perturbation.NONE:
        if plot is not None:
            raise typer.BadParameter("--plot draws one GPU's replay; leave it out with several.")
        simulate_group(
            workload=workload, everything=everything, gpu=gpu,
            sharing=sharing or Sharing.GROUP, before=before or [], perturb=perturb,
            settings=settings, pure=engine is EngineKind.PURE, url=url, token=token,
            power_limit=power_limit, json_output=json_output,
        )  # fmt: skip
        return
    # --- end of job groups
    cases = _cases(workload, gpu, everything, power_limit)
    stderr = Console(stderr=True)
    kind = redact_url(url) if url is not None else engine.value  # printed: no credential
    results = asyncio.run(_replay_all(cases, settings, engine, url, token, stderr))
    if json_output:
        typer.echo(_json(results, kind))
    else:
        stdout = Console()
        if not stdout.is_terminal:
            stdout = Console(width=160)  # piped: do not squeeze the table into 80 columns
        render_summary(stdout, results, engine=kind, settings=asdict(settings))
    if plot is not None:
        from app.sim.plot import plot_results

        for path in plot_results(results, plot):
            stderr.print(f"plot written to {path}")
    if any(r.error for r in results):
        raise typer.Exit(1)
