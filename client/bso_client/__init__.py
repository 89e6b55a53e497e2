"""bso-client: ask a bso server for each recurrence's batch size, report epochs, obey stop.

    from bso_client import BatchSizeOptimizer, JobSpec

    bso = BatchSizeOptimizer(job=JobSpec(job_id="digits-nightly", job_id_prefix="digits",
                                         batch_sizes=[16, 32, 64], default_batch_size=32))
    for trial in bso.trials():  # tries until one reaches the target
        with trial:
            for epoch in range(1, trial.max_epochs + 1):
                accuracy = train_one_epoch(trial.batch_size)
                if trial.report(metric=accuracy).stop:
                    break
    print(bso.last.reason)  # "converged", "max_tries", "fallback", ...

Depends on httpx only. Energy comes from NVML (``bso-client[nvidia]``), a
ZeusMonitor, RAPL, or nothing (time only); see ``bso_client.meters``.
"""

from bso_client.aio import AsyncBatchSizeOptimizer, AsyncRecurrence, AsyncTrial
from bso_client.errors import (
    BSOError,
    BSORejectedError,
    BSOUnavailableError,
    BSOWarning,
    EnergyWarning,
    RejectedWarning,
    UnavailableWarning,
)
from bso_client.http import Retry
from bso_client.meters import EnergyMeter, MeterUnavailableError
from bso_client.optimizer import BatchSizeOptimizer, Recurrence, Trial
from bso_client.recurrence import Outcome
from bso_client.spec import Host, JobSpec
from bso_client.trial import Decision

__version__ = "0.1.0"

__all__ = [
    "AsyncBatchSizeOptimizer",
    "AsyncRecurrence",
    "AsyncTrial",
    "BSOError",
    "BSORejectedError",
    "BSOUnavailableError",
    "BSOWarning",
    "BatchSizeOptimizer",
    "Decision",
    "EnergyMeter",
    "EnergyWarning",
    "Host",
    "JobSpec",
    "MeterUnavailableError",
    "Outcome",
    "Recurrence",
    "RejectedWarning",
    "Retry",
    "Trial",
    "UnavailableWarning",
    "__version__",
]
