"""A plain PyTorch training loop whose batch size a bso server chooses, recurrence after recurrence.

    scripts/dev.sh &                                   # a server on :8000
    python -m examples.plain_pytorch --recurrences 20  # BSO_URL / BSO_TOKEN or --url / --token

Each recurrence (``bso.trials()``) asks for a batch size, trains a fresh
model epoch by epoch, reports the validation accuracy after each and stops
when the server says so; a run the server stopped before the target (for its
cost, or out of epochs) is tried again with the next batch size it gives, and
every try is a row of the table. Time and energy are the client's
measurements (NVML, RAPL, or ``max_power x time``). ``--baseline N`` then
trains N recurrences at the default batch size, without the server, to
measure what always using the default costs. ``--cpu-time`` reports CPU
seconds (``trial.report(time=...)``) instead of wall time.
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
    bso: BatchSizeOptimizer,
    data: digits.Digits,
    number: int,
    cpu_time: bool = False,
    max_tries: int = 20,
) -> list[digits.Row]:
    """One recurrence of the job: the client's lines around an ordinary loop; a row per try.

    With ``cpu_time`` the loop reports this process's CPU seconds (``time=``)
    instead of letting the client measure wall time: on a shared machine, other
    processes' load makes wall time vary several-fold between identical runs.
    """
    rows: list[digits.Row] = []
    for trial in bso.trials(max_tries=max_tries):
        model, optimizer = fresh_model()  # each try trains from scratch
        acc, reporting, reporting_cpu = 0.0, 0.0, 0.0
        with trial:
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
        row = digits.row_of(number, len(rows) + 1, trial, acc)
        row.report_ms = 1000 * reporting / max(trial.epoch, 1)
        row.report_cpu_ms = 1000 * reporting_cpu / max(trial.epoch, 1)
        rows.append(row)
    return rows


def baseline(
    recurrences: int,
    data: digits.Digits,
    bso: BatchSizeOptimizer,
    meter: EnergyMeter,
    cpu_time: bool,
    max_tries: int,
) -> list[float]:
    """Costs of ``recurrences`` recurrences always at the default batch size, without the server.

    A run stops at the target or max_epochs; one that misses the target is
    tried again (up to ``max_tries``), every try's cost counted, as a
    recurrence with the service counts them. Measured as the client measures
    a trial: wall (or CPU) time, and the same meter's energy (``max_power x
    time`` when the meter only keeps time).
    """
    max_power = float((bso.registered or {}).get("max_power", meter.host.max_power))
    costs = []
    for _ in range(recurrences):
        spent = 0.0
        for _try in range(max_tries):
            model, optimizer = fresh_model()
            clock = time.process_time if cpu_time else time.monotonic
            started, joules = clock(), meter.joules()
            reached = False
            for _epoch in range(1, bso.job.max_epochs + 1):
                train_epoch(model, optimizer, data, bso.job.default_batch_size)
                if reached := accuracy(model, data) >= bso.job.target_metric:
                    break
            elapsed = clock() - started
            energy = meter.joules() - joules if meter.measures_energy else max_power * elapsed
            spent += digits.cost(energy, elapsed, eta=bso.job.eta_knob, max_power=max_power)
            if reached:
                break
        costs.append(spent)
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
            for row in recurrence(bso, data, number, args.cpu_time, args.max_tries):
                rows.append(row)
                digits.print_row(row)
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
            costs = baseline(args.baseline, data, bso, meter, args.cpu_time, args.max_tries)
            mean = statistics.fmean(costs)
            summary.against_default(
                mean * summary.recurrences,
                f"{args.baseline} recurrences measured without the server, {mean:.1f} each",
            )
        digits.print_saving(summary)
    meter.close()
    digits.write_json(args.json, rows, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
