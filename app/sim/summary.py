"""The human-readable summary of ``bso simulate``: one rich table row per case."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from app.sim.results import CaseResult, TryRecord


def compress_sequence(tries: Sequence[TryRecord]) -> str:
    """Run-length encode the batch size of each try; ``!`` marks a try that failed.

    >>> compress_sequence([TryRecord(1, 1, 1, 64, 3, 1.0, 1.0, 1.0, True)] * 3)
    '64x3'
    """
    groups: list[tuple[str, int]] = []
    for t in tries:
        token = f"{t.batch_size}{'' if t.converged else '!'}"
        if groups and groups[-1][0] == token:
            groups[-1] = (token, groups[-1][1] + 1)
        else:
            groups.append((token, 1))
    return " ".join(token if count == 1 else f"{token}x{count}" for token, count in groups)


def _ratio(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _row(result: CaseResult) -> list[str]:
    case = result.case
    marker = "*" if case.notes else ""
    settled = result.settled_at
    return [
        f"{case.workload.dataset}@{case.gpu}",
        str(case.power_limit),
        f"{case.default_batch_size}{marker}",
        str(result.oracle.batch_size),
        f"{result.played}/{result.recurrences}",
        f"{result.cumulative_cost / 1e6:,.2f}",
        _ratio(result.savings_vs_default_pct, "+.1f"),
        _ratio(result.cost_over_oracle, ".3f"),
        "never" if settled is None else str(settled),
    ]


def summary_table(results: Sequence[CaseResult], title: str) -> Table:
    table = Table(title=title)
    for name, justify in (
        ("case", "left"),
        ("PL W", "right"),
        ("default", "right"),
        ("oracle", "right"),
        ("played", "right"),
        ("cost MJ", "right"),
        ("vs default %", "right"),
        ("cost/oracle", "right"),
        ("settled at", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for result in results:
        table.add_row(*_row(result))
    return table


def render_summary(
    console: Console, results: Sequence[CaseResult], *, engine: str, settings: dict[str, Any]
) -> None:
    """Print the table, then each case's batch-size sequence, notes and errors."""
    knobs = ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None)
    console.print(summary_table(results, f"bso simulate ({engine} engine; {knobs})"))
    console.print(
        "vs default: savings of cumulative cost against always the default batch size; "
        "settled at: the recurrence from which every try used the oracle's batch size; "
        "* see notes."
    )
    for result in results:
        console.print(f"[bold]{result.case.name}[/bold]: {compress_sequence(result.tries)}")
        for note in result.case.notes:
            console.print(f"  note: {note}")
        if result.gave_up:
            console.print(f"  {result.gave_up} recurrence(s) did not converge in 20 tries")
        if result.error:
            console.print(f"  [red]error[/red]: {result.error}")
