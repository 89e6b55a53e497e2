"""A plain PyTorch training loop whose batch size a bso server chooses, recurrence after recurrence.

    scripts/dev.sh &                                   # a server on :8000
    python -m examples.plain_pytorch --recurrences 20  # BSO_URL / BSO_TOKEN or --url / --token

Each recurrence asks for a batch size, trains epoch by epoch, reports the
validation accuracy after each and stops when the server says so. Time and
energy are the client's measurements (NVML, RAPL, or ``max_power x time``).
``--baseline N`` then trains N more runs at the default batch size, without
the server, to measure what always using the default costs. ``--cpu-time``
reports CPU seconds (``trial.report(time=...)``) instead of wall time.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence

import torch
from bso_client import BatchSizeOptimizer, EnergyMeter
from bso_client.meters import open_meter

from examples import digits


def train_epoch(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: digits.Digits, batch_size: int
) -> None:
    """One pass over the training set in shuffled batches."""
    model.train()
    order = torch.randperm(len(data.train_x))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(data.train_x[batch]), data.train_y[batch])
        loss.backward()
        optimizer.step()


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: digits.Digits) -> float:
    model.eval()
    return float((model(data.val_x).argmax(dim=1) == data.val_y).float().mean())


def fresh_model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = digits.mlp()
    return model, torch.optim.SGD(model.parameters(), lr=digits.LEARNING_RATE)


def recurrence(
    bso: BatchSizeOptimizer, data: digits.Digits, number: int, cpu_time: bool = False
) -> digits.Row:
    """One run of the job: the three lines of the client around an ordinary loop.

    With ``cpu_time`` the loop reports this process's CPU seconds (``time=``)
    instead of letting the client measure wall time: on a shared machine, other
    processes' load makes wall time vary several-fold between identical runs.
    """
    model, optimizer = fresh_model()
    acc, reporting, reporting_cpu = 0.0, 0.0, 0.0
    with bso.trial() as trial:
        cpu_started = time.process_time()
        for _epoch in range(1, trial.max_epochs + 1):
            train_epoch(model, optimizer, data, trial.batch_size)
            acc = accuracy(model, data)
            started, started_cpu = time.perf_counter(), time.process_time()
            trained = started_cpu - cpu_started - reporting_cpu if cpu_time else None
            decision = trial.report(metric=acc, time=trained)
            reporting += time.perf_counter() - started  # the client's overhead, wall time
            reporting_cpu += time.process_time() - started_cpu
            if decision.stop:
                break
    row = digits.row_of(number, trial, acc, bso)
    row.report_ms = 1000 * reporting / max(trial.epoch, 1)
    row.report_cpu_ms = 1000 * reporting_cpu / max(trial.epoch, 1)
    return row


def baseline(
    runs: int, data: digits.Digits, bso: BatchSizeOptimizer, meter: EnergyMeter, cpu_time: bool
) -> list[float]:
    """Costs of ``runs`` runs at the default batch size, stopped at the target or max_epochs.

    Measured as the client measures a trial: wall time, and the same meter's
    energy (``max_power x time`` when the meter only keeps time).
    """
    max_power = float((bso.registered or {}).get("max_power", meter.host.max_power))
    costs = []
    for _ in range(runs):
        model, optimizer = fresh_model()
        clock = time.process_time if cpu_time else time.monotonic
        started, joules = clock(), meter.joules()
        for _epoch in range(1, bso.job.max_epochs + 1):
            train_epoch(model, optimizer, data, bso.job.default_batch_size)
            if accuracy(model, data) >= bso.job.target_metric:
                break
        elapsed = clock() - started
        energy = meter.joules() - joules if meter.measures_energy else max_power * elapsed
        costs.append(digits.cost(energy, elapsed, eta=bso.job.eta_knob, max_power=max_power))
    return costs


def main(argv: Sequence[str] | None = None) -> int:
    cli = digits.parser(__doc__.splitlines()[0], "digits-plain")
    cli.add_argument("--baseline", type=int, default=0, help="runs at the default, no server")
    cli.add_argument(
        "--cpu-time", action="store_true", help="report CPU seconds, not wall time (shared hosts)"
    )
    args = cli.parse_args(argv)
    data = digits.load()
    rows = []
    meter = open_meter("auto")  # NVML, Zeus, RAPL or time only: the first that works here
    with BatchSizeOptimizer(
        job=digits.job_spec(args.job_id, max_epochs=args.max_epochs),
        url=args.url,
        token=args.token,
        energy=meter,
    ) as bso:
        print(f"Job {args.job_id} on {bso.url}: {args.recurrences} recurrences")
        for number in range(1, args.recurrences + 1):
            digits.setup_torch(args.seed, number)
            rows.append(recurrence(bso, data, number, args.cpu_time))
            digits.print_row(rows[-1])
        summary = digits.summarise(bso, rows, args.token)
        reports = sum(row.epochs for row in rows)
        wall_ms = sum((row.report_ms or 0.0) * row.epochs for row in rows) / max(reports, 1)
        cpu_ms = sum((row.report_cpu_ms or 0.0) * row.epochs for row in rows) / max(reports, 1)
        print(
            f"The client's overhead per report: {wall_ms:.2f} ms wall time of trial.report() "
            f"(the HTTP round trip included), {cpu_ms:.2f} ms of this process's CPU "
            f"({reports} reports)."
        )
        if args.baseline:
            costs = baseline(args.baseline, data, bso, meter, args.cpu_time)
            mean = statistics.fmean(costs)
            summary.default_spent = mean * len(rows)
            print(
                f"Baseline: {args.baseline} runs at the default batch size "
                f"{bso.job.default_batch_size} cost {mean:.1f} each on average; "
                f"{len(rows)} of them would cost {summary.default_spent:.1f} "
                f"against {summary.spent:.1f} with the service "
                f"({summary.spent / summary.default_spent:.2f}x)."
            )
    meter.close()
    digits.write_json(args.json, rows, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
