"""A tiny hand-made case, so tests can know the right answer."""

from __future__ import annotations

from typing import Any

from app.schemas import JobSpec
from app.sim.traces import Case, EpochProfile, Workload

WORKLOAD = Workload("toy", "net", "sgd", target_metric=0.5, max_epochs=10, default_batch_size=16)


def toy_case(
    paths: dict[int, tuple[int | None, ...]] | None = None,
    *,
    default_batch_size: int = 16,
    workload: Workload = WORKLOAD,
) -> Case:
    """Batch sizes 8/16/32; per epoch 10 s at 100 W, so an epoch costs 1000 J at eta 0.5."""
    paths = paths or {8: (6, 8), 16: (4, 4), 32: (3, None)}
    profiles = {bs: EpochProfile(10.0, 100.0) for bs in paths}
    return Case(
        workload=workload,
        gpu="toy",
        power_limit=100,
        num_power_limits=2,
        batch_sizes=tuple(sorted(paths)),
        default_batch_size=default_batch_size,
        paths=paths,
        profiles=profiles,
    )


def respec(spec: JobSpec, **changes: Any) -> JobSpec:
    """A copy of ``spec`` with ``changes``, validated as a registration is."""
    return JobSpec.model_validate({**spec.model_dump(), **changes})
