"""The plain PyTorch loop in data-parallel training: only rank 0 talks to the server.

    scripts/dev.sh &
    torchrun --nproc-per-node 2 -m examples.plain_distributed --recurrences 4

Every rank makes the optimizer and runs ``bso.trials()``; rank 0's trials ask
the server, the others' are local stand-ins that never call it. Rank 0's batch
size and its decisions reach every rank through ``broadcast`` (a
``torch.distributed`` collective) and ``trial.follow``, so all ranks train
with the same batch size, stop at the same epoch, and try again together.
The job's batch size is the global one: each of the N ranks takes 1/N of it.
Here the ranks are CPU processes (gloo).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
import torch.distributed as dist
from bso_client import BatchSizeOptimizer
from bso_client.distributed import broadcast

from examples import digits
from examples.plain_pytorch import accuracy, fresh_model


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: digits.Digits,
    batch_size: int,
    epoch: int,
) -> None:
    """One pass, each rank on its own 1/N of the same shuffled order, gradients averaged by DDP."""
    rank, world = dist.get_rank(), dist.get_world_size()
    order = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(epoch))
    mine = order[: len(order) - len(order) % world][rank::world]  # same length on every rank
    per_rank = max(batch_size // world, 1)
    model.train()
    for start in range(0, len(mine), per_rank):
        batch = mine[start : start + per_rank]
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(data.train_x[batch]), data.train_y[batch])
        loss.backward()
        optimizer.step()


def recurrence(
    bso: BatchSizeOptimizer, data: digits.Digits, number: int, max_tries: int = 20
) -> list[digits.Row]:
    rows: list[digits.Row] = []
    for trial in bso.trials(max_tries=max_tries):  # rank 0 asks the server; the others never
        module, optimizer = fresh_model()
        model = torch.nn.parallel.DistributedDataParallel(module)  # rank 0's weights everywhere
        acc = 0.0
        with trial:
            batch_size = broadcast(trial.batch_size)  # rank 0's batch size on every rank
            for epoch in range(1, trial.max_epochs + 1):
                train_epoch(model, optimizer, data, batch_size, epoch)
                acc = accuracy(module, data)  # the same weights, so the same value, everywhere
                # Rank 0's decision on every rank: the same stop, and the same next try.
                if trial.follow(broadcast(trial.report(metric=acc))).stop:
                    break
        rows.append(digits.row_of(number, len(rows) + 1, trial, acc))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = digits.parser(__doc__.splitlines()[0], "digits-distributed").parse_args(argv)
    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR/PORT
    leader = dist.get_rank() == 0
    data = digits.load()
    rows = []
    with BatchSizeOptimizer(
        job=digits.job_spec(args.job_id, max_epochs=args.max_epochs),
        url=args.url,
        token=args.token,
    ) as bso:
        if leader:
            print(
                f"Job {args.job_id} on {bso.url}: {args.recurrences} recurrences on "
                f"{dist.get_world_size()} ranks"
            )
        for number in range(1, args.recurrences + 1):
            digits.setup_torch(args.seed, number)
            for row in recurrence(bso, data, number, args.max_tries):
                if leader:
                    rows.append(row)
                    digits.print_row(row)
        if leader:
            summary = digits.summarise(bso, rows, args.token)
            digits.print_saving(summary)
            digits.write_json(args.json, rows, summary)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
