"""``bso import-zeus``'s mapping: a Zeus 0.16 job as our rows, so that it goes on where it was.

A Zeus job maps onto ours column for column (spec, stage, min cost, arms,
trials and the seeded generator state, which both keep as numpy's
``bit_generator.state`` dict: Zeus as JSON text, we as a JSON column). What we
keep and Zeus does not is derived from the imported trials with the
algorithm's own functions, as our service would have computed it:

- each Succeeded trial's cost (``bandit.zeus_cost``), and per batch size the
  running reward statistics behind a refit with ``window_size`` 0
  (``RewardStats.add`` in trial order, as each final report adds one);
- an exploration's pruning round: the r-th non-Failed exploration of a batch
  size is its round-r one (the pruning walk's invariant);
- leases: a Dispatched trial's starts at the import; a Failed trial failed by
  ``PATCH /trials`` (the only way Zeus fails one), reason ``Ended``.

Zeus writes naive timestamps (its server's local time): they are read as UTC.
Pure: rows in, rows out (app/zeus_import/run.py reads and writes them).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydantic import ValidationError

from app.bandit import (
    ArmPosterior,
    FailureReason,
    Policy,
    RewardStats,
    Stage,
    TrialStatus,
    TrialType,
    reward,
    zeus_cost,
)
from app.schemas import JOB_SPEC_FIELDS, JobSpec
from app.service import new_job_row
from app.zeus_import.source import ZeusJob


class RowRefusedError(Exception):
    """A row of a Zeus job that our schema cannot hold: the job is not imported."""

    def __init__(self, row: str, why: str) -> None:
        super().__init__(f"{row}: {why}")


@dataclass(frozen=True, slots=True)
class MappedJob:
    """A Zeus job as our tables hold it, ready for ``app.store.jobs.insert_imported_job``."""

    spec: JobSpec
    job: dict[str, Any]
    batch_sizes: list[dict[str, Any]]
    trials: list[dict[str, Any]]
    arms: tuple[ArmPosterior, ...]

    @property
    def dispatched(self) -> int:
        return sum(t["status"] == TrialStatus.DISPATCHED for t in self.trials)

    def describe(self) -> str:
        running = f" ({self.dispatched} Dispatched, leased from now)" if self.dispatched else ""
        return (
            f"{len(self.batch_sizes)} batch sizes, {len(self.trials)} trials{running}, "
            f"{len(self.arms)} arms, stage {self.job['stage']}"
        )


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# What Zeus has no column for: the policy is set by map_job, and an imported job
# joins no group (a later registration with a group is refused as a different spec).
_NOT_IN_ZEUS = {"policy", "group"}


def _spec(zeus: ZeusJob) -> JobSpec:
    values = {name: zeus.job[name] for name in JOB_SPEC_FIELDS if name not in _NOT_IN_ZEUS}
    try:
        return JobSpec.model_validate(
            {**values, "job_id": zeus.job_id, "batch_sizes": list(zeus.batch_sizes)}
        )
    except ValidationError as exc:
        why = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}"
                        for e in exc.errors())  # fmt: skip
        raise RowRefusedError("its Job row", why) from exc


def _generator_state(job: Mapping[str, Any]) -> dict[str, Any] | None:
    """Zeus's saved generator state (``json.dumps(rng.__getstate__())``) as ours stores it.

    None for an unseeded job, and for a seeded job with no usable state yet:
    our service then starts from the seed, as Zeus does at registration. Zeus
    on numpy 2 saves ``null`` (its seeded draws were not reproducible there).
    """
    text = job["mab_random_generator_state"]
    if job["mab_seed"] is None or text is None:
        return None
    try:
        state = json.loads(text)
        if state is None:
            return None
        np.random.default_rng(0).bit_generator.state = state  # refuses a malformed one
    except (ValueError, TypeError, KeyError) as exc:
        raise RowRefusedError(
            "its Job row", f"mab_random_generator_state is not a numpy PCG64 state ({exc})"
        ) from exc
    return dict(state)


def _trial(
    zeus: ZeusJob, t: Mapping[str, Any], *, cost_of: Callable[[float, float], float], now: datetime
) -> dict[str, Any]:
    """One Zeus trial row as ours; its cost is set for a Succeeded trial."""
    row = f"trial {t['trial_number']}"
    try:
        trial_type, status = TrialType(t["type"]), TrialStatus(t["status"])
    except ValueError as exc:
        raise RowRefusedError(row, str(exc)) from exc
    if t["batch_size"] not in zeus.batch_sizes:
        raise RowRefusedError(row, f"batch size {t['batch_size']} is not one of the job's")
    start, end = _utc(t["start_timestamp"]), _utc(t["end_timestamp"])
    result = (t["time"], t["energy"], t["converged"])
    if start is None:
        raise RowRefusedError(row, "no start_timestamp")
    if end is not None and end < start:
        raise RowRefusedError(row, f"ends ({end:%Y-%m-%d %H:%M:%S}) before it starts "
                              f"({start:%Y-%m-%d %H:%M:%S})")  # fmt: skip
    if any(v is not None and v < 0 for v in result[:2]):
        raise RowRefusedError(row, f"negative time or energy ({t['time']}, {t['energy']})")
    values = {
        "job_id": zeus.job_id, "trial_number": t["trial_number"], "batch_size": t["batch_size"],
        "type": trial_type.value, "status": status.value, "start_timestamp": start,
        "end_timestamp": end, "time": None, "energy": None, "cost": None, "converged": None,
        "lease_renewed_at": start, "failure_reason": None, "pruning_round": None,
        "last_epoch": None, "last_cost": None,
    }  # fmt: skip
    if status == TrialStatus.SUCCEEDED:
        if end is None or None in result:
            raise RowRefusedError(
                row, "Succeeded without its end_timestamp, time, energy or converged"
            )
        cost = cost_of(t["energy"], t["time"])
        values.update(time=t["time"], energy=t["energy"], cost=cost, converged=t["converged"])
    elif any(v is not None for v in result):
        raise RowRefusedError(row, f"{status.value} but with a result (time, energy or converged)")
    elif status == TrialStatus.FAILED:
        if end is None:
            raise RowRefusedError(row, "Failed without an end_timestamp")
        values["failure_reason"] = FailureReason.ENDED.value  # PATCH /trials: Zeus's only way
    elif end is not None:
        raise RowRefusedError(row, "Dispatched but with an end_timestamp")
    else:
        values["lease_renewed_at"] = now  # a lease starting at the import
    return values


def _arm(zeus: ZeusJob, a: Mapping[str, Any]) -> ArmPosterior:
    row = f"arm {a['batch_size']}"
    if a["batch_size"] not in zeus.batch_sizes:
        raise RowRefusedError(row, f"batch size {a['batch_size']} is not one of the job's")
    values = (a["param_mean"], a["param_precision"], a["reward_precision"], a["num_observations"])
    if None in values:
        raise RowRefusedError(row, "a value is missing")
    return ArmPosterior(a["batch_size"], *values)


def map_job(zeus: ZeusJob, *, now: datetime) -> MappedJob:
    """Our rows for one Zeus job (pure: nothing read or written).

    Raises:
        RowRefusedError: a row our schema refuses (which row, and why).
    """
    spec = _spec(zeus).model_copy(update={"policy": Policy.ZEUS})  # Zeus ran the paper's
    job = zeus.job
    try:
        stage = Stage(job["stage"])
    except ValueError as exc:
        raise RowRefusedError("its Job row", f"unknown stage {job['stage']!r}") from exc

    def cost_of(energy: float, time: float) -> float:
        return zeus_cost(energy, time, spec.eta_knob, spec.max_power)

    stats: dict[int, RewardStats] = defaultdict(RewardStats)
    explored: dict[int, int] = defaultdict(int)
    trials = []
    for t in zeus.trials:
        values = _trial(zeus, t, cost_of=cost_of, now=now)
        if values["cost"] is not None:  # each final report adds its reward, in trial order
            stats[t["batch_size"]] = stats[t["batch_size"]].add(reward(values["cost"]))
        if values["type"] == TrialType.EXPLORATION:
            values["pruning_round"] = explored[t["batch_size"]]
            explored[t["batch_size"]] += values["status"] != TrialStatus.FAILED
        trials.append(values)
    arms = tuple(_arm(zeus, a) for a in zeus.arms)
    if stage == Stage.MAB and not arms:
        raise RowRefusedError("its Job row", "in the MAB stage but without arms")
    values = new_job_row(spec, zeus.job_id, now) | {
        "stage": stage.value,
        "min_cost": job["min_cost"],
        "min_cost_batch_size": job["min_cost_batch_size"],
        "next_trial_number": (trials[-1]["trial_number"] + 1) if trials else 1,
        "rng_state": _generator_state(job),
        "created_at": min((t["start_timestamp"] for t in trials), default=now),
    }
    batch_sizes = [
        {"job_id": zeus.job_id, "batch_size": bs, "reward_count": stats[bs].count,
         "reward_mean": stats[bs].mean, "reward_m2": stats[bs].m2, "min_converged_epochs": None,
         "predicted_cost": None}
        for bs in zeus.batch_sizes
    ]  # fmt: skip
    return MappedJob(spec, values, batch_sizes, trials, arms)
