"""A Hugging Face Trainer job whose batch size a bso server chooses, through the TrainerCallback.

    scripts/dev.sh &
    python -m examples.transformers_digits --recurrences 6  # BSO_URL/BSO_TOKEN or --url/--token

The model is a transformers ``PreTrainedModel`` built from its config (no
download): the digits MLP behind the library's model interface, trained by
``Trainer`` with plain SGD like the other examples. The callback sets
``per_device_train_batch_size`` from the trial, reports ``eval_accuracy``
after each epoch's evaluation and stops training when the server says so.
Each recurrence is a loop around ``trainer.train()`` (``bso.trials()``): a
run the server stopped before the target is trained again from scratch with
the next batch size it gives.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the model is a config

import numpy as np
import torch
from bso_client import BatchSizeOptimizer
from bso_client.huggingface import BatchSizeOptimizerCallback
from transformers import (
    EvalPrediction,
    PretrainedConfig,
    PreTrainedModel,
    PrinterCallback,
    Trainer,
    TrainingArguments,
)
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import logging as hf_logging

from examples import digits


class DigitsConfig(PretrainedConfig):
    """The classifier's shape: 64 pixels in, ``hidden_size`` units, 10 classes out."""

    model_type = "bso-digits-mlp"

    def __init__(self, hidden_size: int = 32, num_labels: int = 10, **kwargs: Any) -> None:
        self.hidden_size = hidden_size
        super().__init__(num_labels=num_labels, **kwargs)


class DigitsClassifier(PreTrainedModel):
    """A transformers model made from a config, with the digits MLP inside."""

    config_class = DigitsConfig

    def __init__(self, config: DigitsConfig) -> None:
        super().__init__(config)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, config.hidden_size),
            torch.nn.ReLU(),
            torch.nn.Linear(config.hidden_size, config.num_labels),
        )
        self.post_init()

    def forward(
        self, pixels: torch.Tensor, labels: torch.Tensor | None = None
    ) -> SequenceClassifierOutput:
        logits = self.net(pixels)
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


class Pixels(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """The digits as the Trainer wants them: one dict per example."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixels": self.x[index], "labels": self.y[index]}


def accuracy(prediction: EvalPrediction) -> dict[str, float]:
    logits: Any = prediction.predictions
    return {"accuracy": float((np.argmax(logits, axis=-1) == prediction.label_ids).mean())}


def recurrence(
    bso: BatchSizeOptimizer, data: digits.Digits, number: int, output_dir: str, max_tries: int = 20
) -> list[digits.Row]:
    """One recurrence: a fresh model and ``Trainer`` per try, until a try reaches the target."""
    rows: list[digits.Row] = []
    for trial in bso.trials(max_tries=max_tries):
        with trial:
            args = training_arguments(bso, output_dir)
            callback = BatchSizeOptimizerCallback(trial, args, metric="accuracy")
            trainer = Trainer(
                model=DigitsClassifier(DigitsConfig()),
                args=args,
                train_dataset=Pixels(data.train_x, data.train_y),
                eval_dataset=Pixels(data.val_x, data.val_y),
                compute_metrics=accuracy,
                callbacks=[callback],
            )
            trainer.remove_callback(PrinterCallback)  # the table says it all
            trainer.train()
        assert args.per_device_train_batch_size == trial.batch_size  # set by the callback
        # The final accuracy; the callback reports only while training: this reaches no server.
        last = float(trainer.evaluate()["eval_accuracy"])
        rows.append(digits.row_of(number, len(rows) + 1, trial, last))
    return rows


def training_arguments(bso: BatchSizeOptimizer, output_dir: str) -> TrainingArguments:
    """The Trainer's arguments; the callback sets ``per_device_train_batch_size``."""
    return TrainingArguments(
        output_dir=output_dir,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        optim="sgd",
        learning_rate=digits.LEARNING_RATE,
        lr_scheduler_type="constant",
        num_train_epochs=bso.job.max_epochs,
        per_device_eval_batch_size=512,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def main(argv: Sequence[str] | None = None) -> int:
    cli = digits.parser(__doc__.splitlines()[0], "digits-transformers")
    args = cli.parse_args(argv)
    hf_logging.set_verbosity_error()
    data = digits.load()
    rows = []
    spec = digits.job_spec(args.job_id, max_epochs=args.max_epochs)
    with (
        tempfile.TemporaryDirectory(prefix="bso-transformers-") as output_dir,
        BatchSizeOptimizer(job=spec, url=args.url, token=args.token) as bso,
    ):
        print(f"Job {args.job_id} on {bso.url}: {args.recurrences} recurrences (Transformers)")
        for number in range(1, args.recurrences + 1):
            digits.setup_torch(args.seed, number)
            for row in recurrence(bso, data, number, output_dir, args.max_tries):
                rows.append(row)
                digits.print_row(row)
        summary = digits.summarise(bso, rows, args.token)
        digits.print_saving(summary)
    digits.write_json(args.json, rows, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
