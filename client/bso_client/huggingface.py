"""A Hugging Face ``TrainerCallback``: the trial's batch size for the arguments, and its stop.

    args = TrainingArguments(output_dir="out", eval_strategy="epoch", num_train_epochs=30)
    for trial in bso.trials():            # a run stopped before the target is trained again
        with trial:
            callback = BatchSizeOptimizerCallback(trial, args, metric="eval_accuracy")
            Trainer(model=make_model(), args=args, ..., callbacks=[callback]).train()

Made after ``TrainingArguments`` (which joins the process group under
torchrun or accelerate), the callback sets ``per_device_train_batch_size``
to rank 0's batch size on every rank. After every evaluation rank 0 reports
``metric`` (an ``eval_*`` key of the metrics) and the server's decision is
broadcast, so every rank sets ``control.should_training_stop`` together and
every rank's ``bso.trials()`` trains again (or ends) together.
Only rank 0's trial talks to the server. Needs ``bso-client[transformers]``.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from bso_client import distributed
from bso_client.optimizer import Trial
from bso_client.trial import Decision


class BatchSizeOptimizerCallback(TrainerCallback):
    """Report ``metric`` after each evaluation; stop training when the server says so.

    Args:
        trial: the ``bso.trial()`` of this run (on every rank; only rank 0's
            talks to the server).
        args: the ``TrainingArguments`` whose ``per_device_train_batch_size``
            takes the trial's batch size; None to set it yourself (then use
            ``callback.batch_size``).
        metric: the evaluation metric to report; "accuracy" means "eval_accuracy".
    """

    def __init__(
        self, trial: Trial, args: TrainingArguments | None = None, *, metric: str = "eval_loss"
    ) -> None:
        if distributed.rank() != 0 and trial.leader:
            raise RuntimeError(
                f"rank {distributed.rank()} holds a trial that talks to the server: pass "
                "rank= (or set RANK) to BatchSizeOptimizer on every rank"
            )
        self.trial = trial
        self.metric = metric if metric.startswith("eval_") else f"eval_{metric}"
        self.batch_size = int(distributed.broadcast(trial.batch_size))
        self.decision: Decision | None = None
        self.training = False  # trainer.evaluate() outside train() reports nothing
        if args is not None:
            args.per_device_train_batch_size = self.batch_size

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.training = True

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.training = False

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not self.training:
            return
        decision: Decision | None = None
        if state.is_world_process_zero:
            if metrics is None or self.metric not in metrics:
                raise KeyError(
                    f"{self.metric!r} is not among the evaluation metrics "
                    f"{sorted(metrics or {})}: pass metric= one of them (compute_metrics adds more)"
                )
            decision = self.trial.report(metric=float(metrics[self.metric]))
        decision = distributed.broadcast(decision)
        if decision is None:
            return
        self.decision = self.trial.follow(decision)
        if decision.stop:
            control.should_training_stop = True
