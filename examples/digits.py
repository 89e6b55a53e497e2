"""What the three examples share: scikit-learn's digits, the job, the options and the tables.

The data ships with scikit-learn (1,797 8x8 images of handwritten digits), so
nothing is downloaded. The job is chosen so that the service has something
real to learn: with plain SGD at a fixed learning rate, small batch sizes
reach the target accuracy in a few slow epochs, large ones run fast epochs
but need many, and the largest do not reach it within ``max_epochs`` at all.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import torch
from bso_client import BatchSizeOptimizer, JobSpec, Trial
from sklearn.datasets import load_digits

BATCH_SIZES = (8, 16, 32, 64, 128, 256)
DEFAULT_BATCH_SIZE = 32
TARGET_ACCURACY = 0.90
MAX_EPOCHS = 12
# Zeus's beta_knob is 2.0: a run costing twice the cheapest so far is stopped early. Wall
# time on a shared CPU varies up to 2x between identical runs, and an early stop of the
# cheapest batch size in the second pruning round prunes every batch size (the job then
# cannot proceed), so these examples give runs more room.
BETA_KNOB = 3.0
LEARNING_RATE = 0.1
VALIDATION_SIZE = 397  # of 1,797 images; the split is the same in every recurrence


@dataclass(frozen=True)
class Digits:
    """The digits as tensors: pixels scaled to [0, 1] and their labels, split once."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor

    @property
    def train(self) -> torch.utils.data.TensorDataset:
        return torch.utils.data.TensorDataset(self.train_x, self.train_y)

    @property
    def val(self) -> torch.utils.data.TensorDataset:
        return torch.utils.data.TensorDataset(self.val_x, self.val_y)


def load() -> Digits:
    """scikit-learn's digits, split with a fixed seed (recurrences retrain on the same data)."""
    raw = load_digits()
    pixels = torch.tensor(raw.data / 16.0, dtype=torch.float32)
    labels = torch.tensor(raw.target, dtype=torch.long)
    order = torch.randperm(len(pixels), generator=torch.Generator().manual_seed(0))
    val, train = order[:VALIDATION_SIZE], order[VALIDATION_SIZE:]
    return Digits(pixels[train], labels[train], pixels[val], labels[val])


def mlp() -> torch.nn.Module:
    """A small multilayer perceptron: 64 pixels, 32 hidden units, 10 classes."""
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def job_spec(
    job_id: str, *, max_epochs: int = MAX_EPOCHS, target_metric: float = TARGET_ACCURACY
) -> JobSpec:
    """The recurring job: six batch sizes, a target accuracy within ``max_epochs`` epochs."""
    return JobSpec(
        job_id=job_id,
        job_id_prefix="digits",
        batch_sizes=BATCH_SIZES,
        default_batch_size=DEFAULT_BATCH_SIZE,
        target_metric=target_metric,
        max_epochs=max_epochs,
        beta_knob=BETA_KNOB,
    )


def parser(description: str, default_job_id: str) -> argparse.ArgumentParser:
    """The options every example takes."""
    cli = argparse.ArgumentParser(description=description)
    cli.add_argument("--url", default=None, help="the bso server (default: BSO_URL, else :8000)")
    cli.add_argument("--token", default=None, help="a trainer's token (default: BSO_TOKEN)")
    cli.add_argument("--job-id", default=default_job_id, help="the job's id (%(default)s)")
    cli.add_argument(
        "--recurrences", type=int, default=8, help="recurrences of the job (%(default)s)"
    )
    cli.add_argument(
        "--max-tries",
        type=int,
        default=20,
        help="runs per recurrence at most: a run the service stops before the target is "
        "tried again with its next batch size (%(default)s)",
    )
    cli.add_argument(
        "--max-epochs", type=int, default=MAX_EPOCHS, help="epoch budget (%(default)s)"
    )
    cli.add_argument("--seed", type=int, default=None, help="seed of the first recurrence")
    cli.add_argument("--json", default=None, help="also write the rows and summary to this file")
    return cli


def setup_torch(seed: int | None, recurrence: int) -> None:
    """One thread (a tiny model gains nothing from more) and, if asked, a seed per recurrence."""
    torch.set_num_threads(1)
    if seed is not None:
        torch.manual_seed(seed + recurrence)


@dataclass
class Row:
    """One try (a run) of a recurrence as the table shows it; every try's cost counts."""

    recurrence: int
    try_number: int
    trial_number: int | None
    batch_size: int
    epochs: int
    accuracy: float
    time_s: float
    energy_j: float
    energy_source: str
    cost: float
    stopped: str
    report_ms: float | None = None  # mean wall time of one trial.report() (plain loop only)
    report_cpu_ms: float | None = None  # mean CPU time of this process in one trial.report()


def cost(energy: float, time: float, *, eta: float, max_power: float) -> float:
    """The service's cost (docs/SPEC.md section 1)."""
    return eta * energy + (1 - eta) * max_power * time


UNREACHABLE = "server unreachable"


def why_stopped(trial: Trial) -> str:
    """The server's reason (or the client's, without the server), shortened for a table cell."""
    decision = trial.decision
    if decision is None:
        return "no report"
    if trial.fallback or decision.fallback:
        if decision.converged:
            return f"{UNREACHABLE}: target reached"
        return f"{UNREACHABLE}: max epochs" if decision.stop else UNREACHABLE
    if not decision.stop:
        return "epoch budget (no stop)"
    message = decision.message.lower()
    if decision.converged:
        return "converged"
    if "beta" in message or "min_cost" in message or "cost" in message:
        return "early stop (beta x min cost)"
    if "max_epochs" in message or "epoch" in message:
        return "max epochs, target missed"
    return decision.message[:40]


def row_of(recurrence: int, try_number: int, trial: Trial, accuracy: float) -> Row:
    """The table row of a finished try, its cost as the server computes it.

    ``trial.cost`` uses the job's eta and the max_power the client registers
    (or would have registered: a fallback run is priced the same way).
    """
    return Row(
        recurrence=recurrence,
        try_number=try_number,
        trial_number=trial.trial_number,
        batch_size=trial.batch_size,
        epochs=trial.epoch,
        accuracy=accuracy,
        time_s=trial.time,
        energy_j=trial.energy,
        energy_source=trial.energy_source,
        cost=trial.cost,
        stopped=why_stopped(trial),
    )


HEADER = (
    f"{'run':>4} {'try':>3} {'trial':>5} {'batch':>5} {'epochs':>6} {'acc':>6} {'time s':>8} "
    f"{'energy J':>10}  {'energy source':<17} {'cost':>10}  why it stopped"
)


def print_row(row: Row) -> None:
    if row.recurrence == 1 and row.try_number == 1:
        print(HEADER)
    trial = "-" if row.trial_number is None else str(row.trial_number)
    print(
        f"{row.recurrence:>4} {row.try_number:>3} {trial:>5} {row.batch_size:>5} {row.epochs:>6} "
        f"{row.accuracy:>6.3f} {row.time_s:>8.3f} {row.energy_j:>10.1f}  "
        f"{row.energy_source:<17} {row.cost:>10.1f}  {row.stopped}",
        flush=True,
    )


@dataclass
class Summary:
    """What the service settled on, from its read API, against the default batch size.

    ``spent`` counts every try of every recurrence; ``default_spent`` is what
    the recurrences would have cost always at the default (``default_source``
    says how that was measured); ``saving`` is ``1 - spent / default_spent``,
    the one figure the examples print.
    """

    job_id: str
    stage: str | None
    settled_batch_size: int | None
    default_batch_size: int
    mean_cost_by_batch_size: dict[int, float] = field(default_factory=dict)
    recurrences: int = 0
    tries: int = 0
    tries_by_recurrence: list[int] = field(default_factory=list)
    converged_recurrences: int = 0
    spent: float = 0.0
    default_spent: float | None = None
    default_source: str = ""
    saving: float | None = None

    def against_default(self, default_spent: float | None, source: str) -> None:
        """Set what always-default costs, and the saving that follows from it."""
        self.default_spent, self.default_source = default_spent, source
        self.saving = None if not default_spent else 1 - self.spent / default_spent


def _read(bso: BatchSizeOptimizer, path: str, token: str | None) -> Any:
    token = token if token is not None else os.environ.get("BSO_TOKEN") or None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(bso.url.rstrip("/") + path, headers=headers, timeout=10.0)
    response.raise_for_status()
    return response.json()


def summarise(bso: BatchSizeOptimizer, rows: Sequence[Row], token: str | None) -> Summary:
    """Print what the service settled on (GET /jobs/{id} and its arms) and the tries.

    "Settled on" is the arm with the lowest posterior mean cost once the job is
    in the bandit stage, else the cheapest converged batch size so far.
    Until a baseline replaces it, always-default is estimated as the default's
    mean cost in these runs times the number of recurrences (unknown when the
    default never converged here); ``print_saving`` says the result.
    """
    job_id = bso.job_id or ""
    by_size: dict[int, list[float]] = {}
    for row in rows:
        if row.stopped == "converged":
            by_size.setdefault(row.batch_size, []).append(row.cost)
    means = {size: statistics.fmean(costs) for size, costs in sorted(by_size.items())}
    default = bso.job.default_batch_size
    tries: dict[int, int] = {}
    for row in rows:
        tries[row.recurrence] = tries.get(row.recurrence, 0) + 1
    last_of = {row.recurrence: row for row in rows}
    summary = Summary(
        job_id=job_id,
        stage=None,
        settled_batch_size=None,
        default_batch_size=default,
        mean_cost_by_batch_size=means,
        recurrences=len(tries),
        tries=len(rows),
        tries_by_recurrence=[tries[number] for number in sorted(tries)],
        converged_recurrences=sum(
            1 for row in last_of.values() if row.stopped.endswith(("converged", "target reached"))
        ),
        spent=sum(row.cost for row in rows),
    )
    summary.against_default(
        means[default] * len(tries) if default in means else None,
        "the default's mean cost in these runs",
    )
    try:
        job = _read(bso, f"/jobs/{job_id}", token)
        arms = _read(bso, f"/jobs/{job_id}/arms", token)
    except httpx.HTTPError as exc:
        print(f"\nThe server's read API did not answer ({exc}); no summary from it.")
        return summary
    summary.stage = str(job["stage"])
    if arms:
        best = max(arms, key=lambda arm: arm["param_mean"])  # reward = -cost
        summary.settled_batch_size = int(best["batch_size"])
    else:
        summary.settled_batch_size = int(job["min_cost_batch_size"])
    print(f"\nJob {job_id}: stage {summary.stage}, {job['num_trials']} trials on the server.")
    print(
        f"The service settled on batch size {summary.settled_batch_size} "
        f"(default {default}); mean cost of converged runs by batch size: "
        + ", ".join(f"{size}: {mean:.1f}" for size, mean in means.items())
    )
    return summary


def print_saving(summary: Summary) -> None:
    """The one saving figure: every try of every recurrence against always-default."""
    counts = summary.tries_by_recurrence
    print(
        f"{summary.recurrences} recurrences took {summary.tries} runs (tries per recurrence: "
        f"mean {summary.tries / max(summary.recurrences, 1):.2f}, max {max(counts, default=0)}); "
        f"{summary.converged_recurrences} ended at the target."
    )
    if summary.default_spent is None or summary.saving is None:
        print(f"They cost {summary.spent:.1f}; the default never converged here to compare.")
        return
    print(
        f"They cost {summary.spent:.1f}, every try counted; always at the default batch size "
        f"{summary.default_batch_size} ({summary.default_source}) they would cost "
        f"{summary.default_spent:.1f}: {summary.spent / summary.default_spent:.2f}x, "
        f"{summary.saving:+.1%} saved."
    )


def write_json(path: str | None, rows: Sequence[Row], summary: Summary) -> None:
    """The rows and summary as JSON, for tests and benchmarks."""
    if path is None:
        return
    data = {"rows": [asdict(row) for row in rows], "summary": asdict(summary)}
    with open(path, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=1)
