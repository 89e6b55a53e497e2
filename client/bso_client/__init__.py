"""bso-client: ask a bso server for each recurrence's batch size, report epochs, obey stop.

    from bso_client import BatchSizeOptimizer, JobSpec

    bso = BatchSizeOptimizer(job=JobSpec(job_id="digits-nightly", job_id_prefix="digits",
                                         batch_sizes=[16, 32, 64], default_batch_size=32))
    with bso.trial() as trial:
        for epoch in range(1, trial.max_epochs + 1):
            accuracy = train_one_epoch(trial.batch_size)
            if trial.report(metric=accuracy).stop:
                break

Depends on httpx only. Energy comes from NVML (``bso-client[nvidia]``), a
ZeusMonitor, RAPL, or nothing (time only); see ``bso_client.meters``.
"""

from bso_client.aio import AsyncBatchSizeOptimizer, AsyncTrial
from bso_client.errors import (
    BSOError,
    BSORejectedError,
    BSOUnavailableError,
    BSOWarning,
    EnergyWarning,
    UnavailableWarning,
)
from bso_client.http import Retry
from bso_client.meters import EnergyMeter, MeterUnavailableError
from bso_client.optimizer import BatchSizeOptimizer, Trial
from bso_client.spec import Host, JobSpec
from bso_client.trial import Decision

__version__ = "0.1.0"

__all__ = [
    "AsyncBatchSizeOptimizer",
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
    "Retry",
    "Trial",
    "UnavailableWarning",
    "__version__",
]
