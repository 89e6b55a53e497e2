"""docs/training.md's promises of the callbacks that the examples do not reach.

- ``metric="accuracy"`` means ``"eval_accuracy"`` (an ``eval_*`` key is taken
  as it is), and a metric the evaluation does not have is refused naming the
  ones it has;
- a rank other than 0 whose trial would talk to the server is refused when
  the Hugging Face callback is made, and at the Lightning callback's setup,
  before any training: every rank would otherwise register, dispatch and
  report.

With the real transformers objects (TrainingArguments, TrainerState,
TrainerControl) and a real ``bso serve``; the hooks are called as the Trainer
calls them. transformers is imported inside each test: it exists only where the
examples run (Python 3.11), and the other runs must still collect this module to
deselect it by its marker.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from bso_client import BatchSizeOptimizer, JobSpec

from tests.client.conftest import CountingMeter
from tests.support.server import Server


def job(job_id: str) -> JobSpec:
    return JobSpec(job_id=job_id, job_id_prefix="hf", batch_sizes=[16, 32], default_batch_size=32,
                   target_metric=0.9, max_epochs=5)  # fmt: skip


def trials(server: Server, job_id: str) -> list[dict[str, object]]:
    response = httpx.get(f"{server.base_url}/jobs/{job_id}/trials", timeout=10)
    assert response.status_code == 200, response.text
    items: list[dict[str, object]] = response.json()["items"]
    return items


@pytest.mark.parametrize("metric", ["accuracy", "eval_accuracy"])
def test_a_metric_name_without_eval_means_the_eval_metric(
    server: Server, tmp_path: Path, metric: str
) -> None:
    job_id = f"hf-{uuid.uuid4().hex[:8]}"
    from bso_client.huggingface import BatchSizeOptimizerCallback
    from transformers import TrainerControl, TrainerState, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8)
    bso = BatchSizeOptimizer(job=job(job_id), url=server.base_url, energy=CountingMeter())
    with bso, bso.trial() as trial:
        callback = BatchSizeOptimizerCallback(trial, args, metric=metric)
        assert callback.metric == "eval_accuracy"
        assert args.per_device_train_batch_size == trial.batch_size == 32
        state, control = TrainerState(), TrainerControl()
        callback.on_train_begin(args, state, control)
        with pytest.raises(KeyError, match=r"'eval_accuracy' is not among .*'eval_loss'"):
            callback.on_evaluate(args, state, control, metrics={"eval_loss": 0.4})
        callback.on_evaluate(args, state, control, metrics={"eval_loss": 0.4,
                                                            "eval_accuracy": 0.5})  # fmt: skip
        assert not control.should_training_stop
        callback.on_evaluate(args, state, control, metrics={"eval_loss": 0.2,
                                                            "eval_accuracy": 0.95})  # fmt: skip
        assert control.should_training_stop  # the target (0.9) reached: the server said stop
    (stored,) = trials(server, job_id)
    assert (stored["status"], stored["converged"]) == ("Succeeded", True)


def test_a_rank_that_took_itself_for_rank_0_is_refused_at_setup(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = f"hf-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("RANK", "1")  # as torchrun sets it in the second process
    from bso_client.huggingface import BatchSizeOptimizerCallback
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path))
    # rank=0 given on every rank by mistake: this process's trial would talk to the server.
    bso = BatchSizeOptimizer(job=job(job_id), url=server.base_url, energy=CountingMeter(), rank=0)
    with bso, bso.trial() as trial:
        assert trial.leader
        with pytest.raises(RuntimeError, match="rank 1 holds a trial that talks to the server"):
            BatchSizeOptimizerCallback(trial, args, metric="accuracy")
    # Told its rank, the same process opens a local stand-in and never calls the server.
    other = f"hf-{uuid.uuid4().hex[:8]}"
    follower = BatchSizeOptimizer(
        job=job(other), url=server.base_url, energy=CountingMeter(), rank=1
    )
    with follower, follower.trial() as trial:
        assert not trial.leader
        BatchSizeOptimizerCallback(trial, args, metric="accuracy")
    listed = httpx.get(f"{server.base_url}/jobs/{other}", timeout=10)
    assert listed.status_code == 404, "rank 1 registered the job"


def test_lightning_refuses_a_rank_that_took_itself_for_rank_0_at_setup(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Lightning callback's guard, with a real Trainer and module (rank 1 as DDP would set it).

    Two real DDP processes are in tests/examples/test_examples.py; here only the
    trainer's rank is made 1, so that setup runs as on a second rank.
    """
    import lightning
    import torch
    from bso_client.lightning import BatchSizeOptimizerCallback

    class Model(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.batch_size = 8
            self.layer = torch.nn.Linear(2, 2)

    monkeypatch.setattr(lightning.Trainer, "global_rank", property(lambda self: 1))
    trainer = lightning.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False
    )
    model = Model()
    job_id = f"hf-{uuid.uuid4().hex[:8]}"
    # rank=0 given on every rank by mistake: this process's trial would talk to the server.
    bso = BatchSizeOptimizer(job=job(job_id), url=server.base_url, energy=CountingMeter(), rank=0)
    with bso, bso.trial() as trial:
        callback = BatchSizeOptimizerCallback(trial, monitor="val_acc")
        with pytest.raises(RuntimeError, match="rank 1 holds a trial that talks to the server"):
            callback.setup(trainer, model, stage="fit")
        assert model.batch_size == 8  # refused before anything was set
    # Told its rank, the process follows: setup takes the broadcast batch size, no call made.
    other = f"hf-{uuid.uuid4().hex[:8]}"
    follower = BatchSizeOptimizer(
        job=job(other), url=server.base_url, energy=CountingMeter(), rank=1
    )
    with follower, follower.trial() as trial:
        assert not trial.leader
        BatchSizeOptimizerCallback(trial, monitor="val_acc").setup(trainer, model, stage="fit")
    assert httpx.get(f"{server.base_url}/jobs/{other}", timeout=10).status_code == 404
