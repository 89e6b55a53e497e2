"""Plots of ``bso simulate --plot``: per recurrence, the cost and the chosen batch size.

Imported only when a plot is asked for, so matplotlib stays an optional extra. It
uses matplotlib's object API (``Figure``), not pyplot: no global state, no display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from app.sim.results import CaseResult


def plot_paths(results: Sequence[CaseResult], path: Path) -> list[Path]:
    """``path`` for one case; ``{stem}-{dataset}-{gpu}{suffix}`` next to it for several."""
    if len(results) == 1:
        return [path]
    return [
        path.with_name(f"{path.stem}-{r.case.workload.dataset}-{r.case.gpu}{path.suffix}")
        for r in results
    ]


def _costs(ax: Axes, result: CaseResult) -> None:
    played = result.played
    x = range(1, played + 1)
    ax.plot(x, result.per_recurrence, label="optimizer (all tries)", color="tab:blue")
    default, oracle = result.default, result.oracle
    ax.plot(x, default.per_recurrence[:played], label=f"default {default.batch_size}",
            color="tab:gray", alpha=0.7)  # fmt: skip
    ax.plot(x, oracle.per_recurrence[:played], label=f"oracle {oracle.batch_size}",
            color="tab:green", alpha=0.7)  # fmt: skip
    ax.set_ylabel("cost per recurrence (J)")
    ax.legend(loc="upper right", fontsize="small")


def _batch_sizes(ax: Axes, result: CaseResult) -> None:
    for converged, marker, label in ((True, "o", "converged"), (False, "x", "failed try")):
        tries = [t for t in result.tries if t.converged is converged]
        ax.scatter([t.recurrence for t in tries], [t.batch_size for t in tries],
                   marker=marker, s=14, label=label)  # fmt: skip
    ax.axhline(result.oracle.batch_size, color="tab:green", linestyle="--", linewidth=1)
    ax.axhline(result.case.default_batch_size, color="tab:gray", linestyle=":", linewidth=1)
    ax.set_yscale("log", base=2)
    ax.set_yticks(result.case.batch_sizes, [str(bs) for bs in result.case.batch_sizes])
    ax.set_ylabel("batch size")
    ax.set_xlabel("recurrence")
    ax.legend(loc="upper right", fontsize="small")


def plot_results(results: Sequence[CaseResult], path: Path) -> list[Path]:
    """Draw one PNG per case; returns the files written."""
    written = []
    for result, target in zip(results, plot_paths(results, path), strict=True):
        fig = Figure(figsize=(9, 6.5))
        top, bottom = fig.subplots(2, 1, sharex=True)
        _costs(top, result)
        _batch_sizes(bottom, result)
        savings = result.savings_vs_default_pct
        subtitle = "" if savings is None else f" (saves {savings:.1f}% vs default)"
        fig.suptitle(f"{result.case.name} at {result.case.power_limit} W{subtitle}")
        fig.tight_layout()
        fig.savefig(target, dpi=110)
        written.append(target)
    return written
