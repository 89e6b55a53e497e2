"""The Zeus NSDI'23 traces as simulation cases: loading, workloads, paths, oracle.

The *train trace* records, for each (dataset, network, batch size, optimizer)
and each repeated ``run``, the epoch at which each validation target was first
reached (empty: never). The *power trace* of a GPU records, per batch size and
power limit, the seconds per epoch and the average watts; it is deterministic.

A :class:`Case` is one workload on one GPU at one power limit. Its training
*paths* are, per batch size, the reach epochs of the trace's runs in file
order, which is the row order Zeus's simulator samples from (its inner merge of
the two traces keeps the train trace's order), so the same seeded draw picks
the same run. Names are compared case-insensitively.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable

import numpy as np

from app.bandit import zeus_cost

GPUS: tuple[str, ...] = ("a40", "p100", "rtx6000", "v100")


class TraceError(ValueError):
    """The traces cannot make the requested case."""


@dataclass(frozen=True, slots=True)
class Workload:
    """A recurring training job of the paper: what it trains and when it is done."""

    dataset: str
    network: str
    optimizer: str
    target_metric: float
    max_epochs: int
    default_batch_size: int
    higher_is_better_metric: bool = True

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.network}"


WORKLOADS: tuple[Workload, ...] = (
    Workload("cifar100", "shufflenetv2", "adadelta", 0.6, 100, 1024),
    Workload("imagenet", "resnet50", "adadelta", 0.65, 100, 256),
    Workload("librispeech", "deepspeech2", "adamw", 40.0, 16, 192, higher_is_better_metric=False),
    Workload("movielens-1m", "ncf", "adam", 0.41, 100, 1024),
    Workload("squad", "bert_base_uncased", "adamw", 84.0, 6, 32),
    Workload("sentiment140", "bert_base_uncased", "adamw", 0.84, 10, 128),
)


def find_workload(name: str) -> Workload:
    """The workload named by its dataset (``squad``) or ``dataset/network``."""
    key = name.strip().lower()
    for workload in WORKLOADS:
        if key in (workload.dataset, workload.name):
            return workload
    known = ", ".join(w.dataset for w in WORKLOADS)
    raise TraceError(f"Unknown workload {name!r}; choose one of: {known}.")


@dataclass(frozen=True, slots=True)
class TrainRow:
    """One (config, run, target) row of the train trace."""

    dataset: str
    network: str
    batch_size: int
    optimizer: str
    run: int
    target_metric: float
    target_epoch: int | None  # None: the run never reached this target


@dataclass(frozen=True, slots=True)
class PowerRow:
    """One (config, power limit) row of a GPU's power trace."""

    dataset: str
    network: str
    batch_size: int
    optimizer: str
    power_limit: int
    time_per_epoch: float
    average_power: float


@dataclass(frozen=True, slots=True)
class Traces:
    """The train trace and each GPU's power trace."""

    train: tuple[TrainRow, ...]
    power: Mapping[str, tuple[PowerRow, ...]]


def _norm(value: str) -> str:
    return value.strip().lower()


def _read_rows(path: Traversable) -> Iterator[dict[str, str]]:
    with path.open("r", encoding="utf-8") as handle:
        yield from csv.DictReader(handle)


def _reach_epoch(text: str) -> int | None:
    value = float(text) if text.strip() else math.nan  # the trace writes "nan"
    return None if math.isnan(value) else int(value)


def _train_row(row: dict[str, str]) -> TrainRow:
    return TrainRow(
        _norm(row["dataset"]), _norm(row["network"]), int(row["batch_size"]),
        _norm(row["optimizer"]), int(row["run"]), float(row["target_metric"]),
        _reach_epoch(row["target_epoch"]),
    )  # fmt: skip


def _power_row(row: dict[str, str]) -> PowerRow:
    return PowerRow(
        _norm(row["dataset"]), _norm(row["network"]), int(row["batch_size"]),
        _norm(row["optimizer"]), int(float(row["power_limit"])),
        float(row["time_per_epoch"]), float(row["average_power"]),
    )  # fmt: skip


def load_traces(directory: Traversable) -> Traces:
    """Read ``summary_train.csv`` and every ``summary_power_{gpu}.csv`` in ``directory``.

    ``directory`` is a ``pathlib.Path`` or a package resource.
    """
    train = tuple(_train_row(r) for r in _read_rows(directory / "summary_train.csv"))
    power = {
        gpu: tuple(_power_row(r) for r in _read_rows(directory / f"summary_power_{gpu}.csv"))
        for gpu in GPUS
        if (directory / f"summary_power_{gpu}.csv").is_file()
    }
    return Traces(train, power)


@cache
def packaged_traces() -> Traces:
    """The traces shipped in ``app/data/traces`` (read once per process)."""
    return load_traces(resources.files("app.data") / "traces")


@dataclass(frozen=True, slots=True)
class EpochProfile:
    """Seconds and joules of one epoch of one batch size at the case's power limit."""

    time_per_epoch: float
    average_power: float

    @property
    def energy_per_epoch(self) -> float:
        return self.time_per_epoch * self.average_power


@dataclass(frozen=True)
class Case:
    """One workload on one GPU at one power limit, ready to simulate."""

    workload: Workload
    gpu: str
    power_limit: int
    num_power_limits: int  # of the workload on this GPU: sizes the default recurrences
    batch_sizes: tuple[int, ...]
    default_batch_size: int
    paths: Mapping[int, tuple[int | None, ...]]  # reach epoch of each run, trace order
    profiles: Mapping[int, EpochProfile]
    notes: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return f"{self.workload.name}@{self.gpu}"

    @property
    def max_power(self) -> float:
        """The job's ``max_power``: the power limit times the GPU count (one GPU)."""
        return float(self.power_limit)

    @property
    def default_recurrences(self) -> int:
        """2 x |batch sizes| x |power limits|, as in the paper's ``run_single.py``."""
        return 2 * len(self.batch_sizes) * self.num_power_limits

    def time_energy(self, batch_size: int, epochs: int) -> tuple[float, float]:
        """Cumulative seconds and joules after ``epochs`` epochs (Zeus's arithmetic)."""
        profile = self.profiles[batch_size]
        return profile.time_per_epoch * epochs, profile.energy_per_epoch * epochs

    def run_cost(self, batch_size: int, epochs: int, eta_knob: float) -> float:
        time, energy = self.time_energy(batch_size, epochs)
        return zeus_cost(energy, time, eta_knob, self.max_power)


def _choose_default(wanted: int, batch_sizes: tuple[int, ...]) -> tuple[int, str | None]:
    if wanted in batch_sizes:
        return wanted, None
    below = [bs for bs in batch_sizes if bs < wanted]
    if not below:
        raise TraceError(f"No batch size at or below the default {wanted} in {batch_sizes}.")
    return max(below), f"default batch size {wanted} is not in this GPU's trace: using {max(below)}"


def build_case(
    workload: Workload, gpu: str, *, power_limit: int | None = None, traces: Traces | None = None
) -> Case:
    """The case of ``workload`` on ``gpu``; ``power_limit`` defaults to the GPU's maximum."""
    traces = traces if traces is not None else packaged_traces()
    if gpu not in traces.power:
        raise TraceError(
            f"No power trace for GPU {gpu!r}; choose one of: {', '.join(traces.power)}."
        )
    key = (workload.dataset, workload.network, workload.optimizer)
    train = [
        r
        for r in traces.train
        if (r.dataset, r.network, r.optimizer) == key
        and math.isclose(r.target_metric, workload.target_metric, rel_tol=1e-9)
    ]
    power = [r for r in traces.power[gpu] if (r.dataset, r.network, r.optimizer) == key]
    batch_sizes = tuple(sorted({r.batch_size for r in train} & {r.batch_size for r in power}))
    if not batch_sizes:
        raise TraceError(f"The traces have no batch size of {workload.name} on {gpu}.")
    limits = sorted({r.power_limit for r in power if r.batch_size in batch_sizes})
    chosen = (
        power_limit if power_limit is not None else max(r.power_limit for r in traces.power[gpu])
    )
    if chosen not in limits:
        raise TraceError(
            f"Power limit {chosen} W is not in {gpu}'s trace {limits} for {workload.name}."
        )
    profiles = {
        r.batch_size: EpochProfile(r.time_per_epoch, r.average_power)
        for r in power
        if r.power_limit == chosen and r.batch_size in batch_sizes
    }
    notes = [
        f"batch size {bs} has no {chosen} W profile: left out"
        for bs in batch_sizes
        if bs not in profiles
    ]
    batch_sizes = tuple(bs for bs in batch_sizes if bs in profiles)
    default, note = _choose_default(workload.default_batch_size, batch_sizes)
    notes += [note] if note else []
    paths = {bs: tuple(r.target_epoch for r in train if r.batch_size == bs) for bs in batch_sizes}
    return Case(
        workload, gpu, chosen, len(limits), batch_sizes, default, paths, profiles, tuple(notes)
    )


def all_cases(*, power_limit: int | None = None, traces: Traces | None = None) -> list[Case]:
    """Every workload on every GPU (24 cases with the packaged traces)."""
    return [
        build_case(w, g, power_limit=power_limit, traces=traces) for w in WORKLOADS for g in GPUS
    ]


class PathSampler:
    """Draws one training path per run of a batch size, as Zeus's simulator does.

    Zeus samples with ``DataFrame.sample(n=1, random_state=rng)``, which is
    ``rng.choice(len(rows), size=1, replace=False)``; the same call on the same
    row order makes a seeded replay draw the same runs.
    """

    def __init__(self, case: Case, seed: int | None) -> None:
        self._case = case
        self._rng = np.random.default_rng(seed)

    def sample(self, batch_size: int) -> int | None:
        """The reach epoch of a random run of ``batch_size`` (None: it never reaches)."""
        runs = self._case.paths[batch_size]
        return runs[int(self._rng.choice(len(runs), size=1, replace=False)[0])]


def converges(case: Case, reach_epoch: int | None) -> bool:
    """Whether a path reaches the target within the workload's epoch budget."""
    return reach_epoch is not None and reach_epoch <= case.workload.max_epochs


def expected_costs(case: Case, eta_knob: float) -> dict[int, float]:
    """Expected cost of one recurrence per batch size, retrying failed runs.

    With convergence probability p over the trace's runs, a recurrence costs
    the mean cost of a converging run plus (1 - p) / p failed runs of
    ``max_epochs`` each (geometric retries); infinite when no run converges.
    """
    costs: dict[int, float] = {}
    for bs in case.batch_sizes:
        reach = [e for e in case.paths[bs] if e is not None and converges(case, e)]
        if not reach:
            costs[bs] = math.inf
            continue
        p = len(reach) / len(case.paths[bs])
        success = float(np.mean([case.run_cost(bs, e, eta_knob) for e in reach]))
        failure = case.run_cost(bs, case.workload.max_epochs, eta_knob)
        costs[bs] = success + (1.0 - p) / p * failure
    return costs


def oracle_batch_size(case: Case, eta_knob: float) -> int:
    """The single batch size with the lowest expected cost in hindsight (smallest on ties)."""
    costs = expected_costs(case, eta_knob)
    return min(case.batch_sizes, key=lambda bs: (costs[bs], bs))
