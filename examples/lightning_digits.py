"""A PyTorch Lightning job whose batch size a bso server chooses, through the Lightning callback.

    scripts/dev.sh &
    python -m examples.lightning_digits --recurrences 8   # BSO_URL / BSO_TOKEN or --url / --token

The callback sets the model's ``batch_size`` from the trial (rank 0's,
broadcast to every rank), reports ``val_acc`` after each validation run and
sets ``trainer.should_stop`` when the server says stop. Each recurrence is a
loop around ``trainer.fit`` (``bso.trials()``): a run the server stopped
before the target is re-fit from scratch with the next batch size it gives.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import torch
from bso_client import BatchSizeOptimizer
from bso_client.distributed import rank
from bso_client.lightning import BatchSizeOptimizerCallback
from lightning.pytorch import LightningModule, Trainer

from examples import digits


class DigitsModel(LightningModule):
    """The MLP with its data: ``batch_size`` is what the callback sets."""

    def __init__(self, data: digits.Digits, batch_size: int) -> None:
        super().__init__()
        self.data = data
        self.batch_size = batch_size
        self.net = digits.mlp()

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        accuracy = (self.net(x).argmax(dim=1) == y).float().mean()
        self.log("val_acc", accuracy, prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=digits.LEARNING_RATE)

    def train_dataloader(self) -> torch.utils.data.DataLoader[tuple[torch.Tensor, ...]]:
        return torch.utils.data.DataLoader(
            self.data.train, batch_size=self.batch_size, shuffle=True
        )

    def val_dataloader(self) -> torch.utils.data.DataLoader[tuple[torch.Tensor, ...]]:
        return torch.utils.data.DataLoader(self.data.val, batch_size=len(self.data.val))


def recurrence(
    bso: BatchSizeOptimizer, data: digits.Digits, number: int, devices: int, max_tries: int = 20
) -> list[digits.Row]:
    """One recurrence: ``trainer.fit`` a fresh model per try, until a try reaches the target."""
    rows: list[digits.Row] = []
    for trial in bso.trials(max_tries=max_tries):
        model = DigitsModel(data, batch_size=bso.job.default_batch_size)
        with trial:
            callback = BatchSizeOptimizerCallback(trial, monitor="val_acc")
            trainer = Trainer(
                max_epochs=trial.max_epochs,
                callbacks=[callback],
                accelerator="cpu",
                devices=devices,
                strategy="ddp" if devices > 1 else "auto",
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                num_sanity_val_steps=1,
            )
            trainer.fit(model)
        assert model.batch_size == callback.batch_size  # the callback set rank 0's on every rank
        if trial.leader:
            assert model.batch_size == trial.batch_size  # this try's, re-fit with it
        # The final accuracy; the callback reports only while fitting: this reaches no server.
        (validated,) = trainer.validate(model, verbose=False)
        rows.append(digits.row_of(number, len(rows) + 1, trial, float(validated["val_acc"])))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    cli = digits.parser(__doc__.splitlines()[0], "digits-lightning")
    cli.add_argument("--devices", type=int, default=1, help="CPU processes (DDP when > 1)")
    args = cli.parse_args(argv)
    # Lightning's advice on workers and GPUs is noise for an 8x8-pixel toy on the CPU.
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    data = digits.load()
    rows = []
    with BatchSizeOptimizer(
        job=digits.job_spec(args.job_id, max_epochs=args.max_epochs),
        url=args.url,
        token=args.token,
    ) as bso:
        # With --devices N, Lightning runs this script again in N - 1 processes (LOCAL_RANK
        # set): their trials never call the server, and only rank 0 prints.
        leader = rank() == 0
        if leader:
            print(f"Job {args.job_id} on {bso.url}: {args.recurrences} recurrences (Lightning)")
        for number in range(1, args.recurrences + 1):
            digits.setup_torch(args.seed, number)
            for row in recurrence(bso, data, number, args.devices, args.max_tries):
                rows.append(row)
                if leader:
                    digits.print_row(row)
        if leader:
            summary = digits.summarise(bso, rows, args.token)
            digits.print_saving(summary)
            digits.write_json(args.json, rows, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
