"""The job's specification, as the training script writes it.

Field names and defaults are the server's (and Zeus's). The client checks
nothing the server checks: a bad spec is refused with the server's own 422
message, so the two never disagree. ``max_power``, ``number_of_gpus`` and
``gpu_model`` are filled from the energy meter unless given here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Host:
    """What the job trains on: the spec's hardware fields."""

    gpu_model: str
    number_of_gpus: int
    max_power: float  # watts, all devices together


@dataclass(frozen=True)
class JobSpec:
    """A recurring training job (the server's ``JobSpec``, docs/SPEC.md section 2).

    ``job_id`` None lets the server make one (``{job_id_prefix}-{8 hex}``) each
    time a new optimizer registers, which defeats learning across runs: give
    a stable id for a recurring job. ``beta_knob=None`` disables early
    stopping; ``policy=None`` takes the server's default; ``group`` names the
    job group (docs/SPEC.md section 12) whose jobs share what each batch size
    needs to converge. tests/client/test_contract.py fails when a field of the
    server's JobSpec is missing here, or one here is not the server's.
    """

    job_id_prefix: str
    batch_sizes: Sequence[int]
    default_batch_size: int
    job_id: str | None = None
    eta_knob: float = 0.5
    beta_knob: float | None = 2.0
    target_metric: float = 0.5
    higher_is_better_metric: bool = True
    max_epochs: int = 100
    num_pruning_rounds: int = 2
    window_size: int = 0
    mab_prior_mean: float = 0.0
    mab_prior_precision: float = 0.0
    mab_num_explorations: int = 2
    mab_seed: int | None = None
    policy: str | None = None
    max_power: float | None = None
    number_of_gpus: int | None = None
    gpu_model: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        # A frozen copy: a list passed in and changed later must not change the spec.
        object.__setattr__(self, "batch_sizes", tuple(self.batch_sizes))

    def wire(self, host: Host) -> dict[str, Any]:
        """The body of POST /jobs: this spec, hardware fields from ``host`` unless set.

        ``policy`` and ``group`` are left out when None, as every Zeus client
        leaves them out (the server then keeps what the job was created with).
        """
        body: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        body["batch_sizes"] = list(self.batch_sizes)
        for optional in ("policy", "group"):
            if body[optional] is None:
                del body[optional]
        for name in ("gpu_model", "number_of_gpus", "max_power"):
            if body[name] is None:
                body[name] = getattr(host, name)
        return body
