"""A PyTorch Lightning callback: the trial's batch size for the model, its stop for the trainer.

    for trial in bso.trials():                # a run stopped before the target is re-fit
        model = make_model()                  # from scratch, each try
        with trial:
            trainer = L.Trainer(max_epochs=trial.max_epochs,
                                callbacks=[BatchSizeOptimizerCallback(trial, monitor="val_acc")])
            trainer.fit(model, datamodule=data)   # model or datamodule has a `batch_size`

At ``setup`` the callback broadcasts rank 0's batch size to every rank
(through ``trainer.strategy``) and sets it where Lightning's own batch size
finder does (``batch_size_attr`` on the model, its hparams, or the
datamodule), so every rank builds its loaders with it. After every
validation run but the sanity check, rank 0 reports ``monitor`` and the
server's decision is broadcast like ``EarlyStopping``'s stop, so all ranks
stop together, and every rank's ``bso.trials()`` re-fits (or ends) together.
Only rank 0's trial talks to the server. Needs ``bso-client[lightning]``.
"""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.parsing import lightning_hasattr, lightning_setattr

from bso_client.optimizer import Trial
from bso_client.trial import Decision


class BatchSizeOptimizerCallback(Callback):
    """Report ``monitor`` after each validation run; stop when the server says so.

    Args:
        trial: the ``bso.trial()`` of this run (on every rank; only rank 0's
            talks to the server).
        monitor: the logged validation metric to report (``trainer.callback_metrics``).
        batch_size_attr: where to set the chosen batch size (as
            ``BatchSizeFinder`` does); None to leave the batch size to you.
    """

    def __init__(
        self, trial: Trial, monitor: str, *, batch_size_attr: str | None = "batch_size"
    ) -> None:
        super().__init__()
        self.trial = trial
        self.monitor = monitor
        self.batch_size_attr = batch_size_attr
        self.batch_size: int = int(trial.batch_size)
        self.decision: Decision | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.global_rank != 0 and self.trial.leader:
            raise RuntimeError(
                f"rank {trainer.global_rank} holds a trial that talks to the server: the client "
                "took this process for rank 0. Pass rank=trainer.global_rank (or set RANK) to "
                "BatchSizeOptimizer on every rank."
            )
        self.batch_size = int(trainer.strategy.broadcast(self.batch_size, src=0))
        if self.batch_size_attr is None:
            return
        if not lightning_hasattr(pl_module, self.batch_size_attr):
            raise AttributeError(
                f"neither the model, its hparams nor the datamodule has {self.batch_size_attr!r}: "
                "give one, or pass batch_size_attr=None and set the batch size yourself"
            )
        lightning_setattr(pl_module, self.batch_size_attr, self.batch_size)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return  # the sanity check, or trainer.validate(): not an epoch of this trial
        decision: Decision | None = None
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.monitor)
            if value is None:
                raise KeyError(
                    f"{self.monitor!r} was not logged during validation; logged: "
                    f"{sorted(trainer.callback_metrics)}"
                )
            decision = self.trial.report(metric=float(value))
        decision = trainer.strategy.broadcast(decision, src=0)
        if decision is None:
            return
        self.decision = self.trial.follow(decision)
        trainer.should_stop = trainer.should_stop or decision.stop
