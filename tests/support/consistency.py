"""Is every job's stored state one that whole requests could have left? (SPEC 7)

:func:`check_consistency` reads the tables directly and recomputes what the
stored trials imply with the service's own algorithm code (app/bandit):

- trial numbers are exactly 1..next_trial_number-1;
- each batch size's running statistics are those of its Succeeded trials;
- each arm is the fit of the rewards it should have seen (its Succeeded
  explorations when the bandit stage began, or, once refitted, its Succeeded
  trials within the window); a job with arms is in the bandit stage, and a
  bandit-stage trial implies arms;
- min_cost is the cheapest converged trial's cost (null when none) and
  min_cost_batch_size that trial's batch size (the default when none);
- a job group's shared statistics per batch size (``group_batch_size``) are
  those of its member jobs' Succeeded trials: ``runs`` is their number and
  ``converged`` the converged ones' (counted once, whichever job reported),
  with ``exhausted``, ``min_epochs`` and ``total_epochs`` within what those
  counts allow (a trial does not store its last epoch); every member's batch
  size has its row, and every member agrees with its group's ``job_group``
  row on target_metric, higher_is_better_metric and max_epochs;
- and what clients were told (``Acknowledged``) is what is stored: every
  acknowledged registration, dispatch, final report (its time, energy and
  verdict, recorded once) and end.

Every problem found is collected, so one failing run names them all.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app import bandit
from app.bandit import ArmPosterior, RewardStats, Stage, TrialStatus, TrialType
from app.store.tables import arm, batch_size, group_batch_size, job, job_group, trial

TrialKey = tuple[str, int]  # (job_id, trial_number)


@dataclass
class Acknowledged:
    """What the service answered 2xx to; each must be in the database."""

    jobs: set[str] = field(default_factory=set)
    dispatched: dict[TrialKey, int] = field(default_factory=dict)  # -> batch size
    results: dict[TrialKey, tuple[float, float, bool]] = field(default_factory=dict)
    ended: set[TrialKey] = field(default_factory=set)  # PATCH answered with status Failed


async def check_consistency(engine: AsyncEngine, acknowledged: Acknowledged | None = None) -> None:
    """Raise AssertionError listing every inconsistency found (all jobs in the database)."""
    async with engine.connect() as conn:
        jobs = [r._asdict() for r in await conn.execute(select(job))]
        sizes = [r._asdict() for r in await conn.execute(select(batch_size))]
        trials = [
            r._asdict() for r in await conn.execute(select(trial).order_by(trial.c.trial_number))
        ]
        arms = [r._asdict() for r in await conn.execute(select(arm))]
        groups = [r._asdict() for r in await conn.execute(select(job_group))]
        group_sizes = [r._asdict() for r in await conn.execute(select(group_batch_size))]
    problems = consistency_problems(
        jobs, sizes, trials, arms, acknowledged or Acknowledged(),
        groups=groups, group_sizes=group_sizes,
    )  # fmt: skip
    assert not problems, "inconsistent state:\n" + "\n".join(problems[:40])


def consistency_problems(
    jobs: Sequence[dict[str, Any]],
    sizes: Sequence[dict[str, Any]],
    trials: Sequence[dict[str, Any]],
    arms: Sequence[dict[str, Any]],
    acknowledged: Acknowledged,
    *,
    groups: Sequence[dict[str, Any]] = (),
    group_sizes: Sequence[dict[str, Any]] = (),
) -> list[str]:
    problems: list[str] = []
    sizes_of: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for row in sizes:
        sizes_of[row["job_id"]][row["batch_size"]] = row
    trials_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in trials:
        trials_of[row["job_id"]].append(row)
    arms_of: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for row in arms:
        arms_of[row["job_id"]][row["batch_size"]] = row
    for row in jobs:
        job_id = row["job_id"]
        problems += [
            f"job {job_id}: {p}"
            for p in _job_problems(row, sizes_of[job_id], trials_of[job_id], arms_of[job_id])
        ]
    problems += _group_problems(jobs, sizes, trials, groups, group_sizes)
    problems += _acknowledged_problems(
        {r["job_id"] for r in jobs}, sizes_of, trials_of, acknowledged
    )
    return problems


def _group_problems(
    jobs: Sequence[dict[str, Any]],
    sizes: Sequence[dict[str, Any]],
    trials: Sequence[dict[str, Any]],
    groups: Sequence[dict[str, Any]],
    group_sizes: Sequence[dict[str, Any]],
) -> list[str]:
    """Each group's tables against its members' rows (group rows are never deleted,
    so this assumes no member job was: its trials would be gone, not its counts)."""
    problems: list[str] = []
    group_of = {r["job_id"]: r["group"] for r in jobs if r["group"] is not None}
    agreed = {r["name"]: r for r in groups}
    for row in jobs:
        name = row["group"]
        if name is None:
            continue
        if name not in agreed:
            problems.append(f"job {row['job_id']}: group {name!r} has no job_group row")
            continue
        fields = ("target_metric", "higher_is_better_metric", "max_epochs")
        if any(row[f] != agreed[name][f] for f in fields):
            problems.append(
                f"job {row['job_id']}: {[row[f] for f in fields]} differs from group {name!r}'s "
                f"{[agreed[name][f] for f in fields]}"
            )
    stored = {(r["group_name"], r["batch_size"]): r for r in group_sizes}
    declared = {(group_of[r["job_id"]], r["batch_size"]) for r in sizes if r["job_id"] in group_of}
    problems += [f"group {g!r}: batch size {bs} has no row" for g, bs in declared - set(stored)]
    runs: dict[tuple[str, int], int] = defaultdict(int)
    converged: dict[tuple[str, int], int] = defaultdict(int)
    for t in trials:
        if t["job_id"] in group_of and t["status"] == TrialStatus.SUCCEEDED:
            key = (group_of[t["job_id"]], t["batch_size"])
            runs[key] += 1
            converged[key] += bool(t["converged"])
    for (name, bs), row in stored.items():
        where = f"group {name!r} batch size {bs}"
        counts = (row["runs"], row["converged"])
        if counts != (runs[(name, bs)], converged[(name, bs)]):
            problems.append(
                f"{where}: runs, converged {counts} but its members' Succeeded trials give "
                f"{(runs[(name, bs)], converged[(name, bs)])}"
            )
        if not 0 <= row["exhausted"] <= row["runs"] - row["converged"]:
            problems.append(f"{where}: exhausted {row['exhausted']} of {counts}")
        max_epochs = agreed[name]["max_epochs"] if name in agreed else None
        if row["converged"] == 0:
            if (row["min_epochs"], row["total_epochs"]) != (None, 0):
                problems.append(f"{where}: min_epochs, total_epochs {row} without a converged run")
        elif (
            row["min_epochs"] is None
            or max_epochs is None
            or not (
                1 <= row["min_epochs"] <= max_epochs
                and row["converged"] * row["min_epochs"]
                <= row["total_epochs"]
                <= row["converged"] * max_epochs
            )
        ):
            problems.append(
                f"{where}: min_epochs {row['min_epochs']}, total_epochs {row['total_epochs']} "
                f"impossible for {row['converged']} converged runs of at most {max_epochs} epochs"
            )
    return problems


def _job_problems(
    job_row: dict[str, Any],
    sizes: dict[int, dict[str, Any]],
    trials: list[dict[str, Any]],
    arms: dict[int, dict[str, Any]],
) -> list[str]:
    problems = []
    if not sizes:
        problems.append("no batch sizes (a registration half done)")
    if job_row["default_batch_size"] not in sizes:
        problems.append(f"default batch size {job_row['default_batch_size']} not stored")
    numbers = [t["trial_number"] for t in trials]
    expected = list(range(1, job_row["next_trial_number"]))
    if numbers != expected:
        problems.append(
            f"trial numbers {_short(numbers)} are not 1..{job_row['next_trial_number'] - 1}"
        )

    succeeded: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for t in trials:
        if t["status"] == TrialStatus.SUCCEEDED:
            succeeded[t["batch_size"]].append(t)
    for bs, row in sizes.items():
        expected_stats = RewardStats()
        for t in succeeded[bs]:
            expected_stats = expected_stats.add(bandit.reward(t["cost"]))
        stored = (row["reward_count"], row["reward_mean"], row["reward_m2"])
        if row["reward_count"] != expected_stats.count or not (
            _close(row["reward_mean"], expected_stats.mean)
            and _close(row["reward_m2"], expected_stats.m2)
        ):
            problems.append(
                f"batch size {bs}: statistics {stored} but its {expected_stats.count} Succeeded "
                f"trials give {(expected_stats.count, expected_stats.mean, expected_stats.m2)}"
            )

    converged = [t for t in trials if t["status"] == TrialStatus.SUCCEEDED and t["converged"]]
    cheapest = min(converged, key=lambda t: t["cost"], default=None)
    if cheapest is None:
        if job_row["min_cost"] is not None:
            problems.append(f"min_cost {job_row['min_cost']} without a converged trial")
        if job_row["min_cost_batch_size"] != job_row["default_batch_size"]:
            problems.append("min_cost_batch_size is not the default without a converged trial")
    else:
        if job_row["min_cost"] is None or not _close(job_row["min_cost"], cheapest["cost"]):
            problems.append(
                f"min_cost {job_row['min_cost']}, but the cheapest converged trial "
                f"({cheapest['trial_number']}) cost {cheapest['cost']}"
            )
        tied = {t["batch_size"] for t in converged if _close(t["cost"], cheapest["cost"])}
        if job_row["min_cost_batch_size"] not in tied:
            problems.append(
                f"min_cost_batch_size {job_row['min_cost_batch_size']}, cheapest converged "
                f"batch sizes {sorted(tied)}"
            )

    bandit_trials = [t for t in trials if t["type"] == TrialType.MAB]
    in_bandit = job_row["stage"] == Stage.MAB
    if in_bandit != bool(arms):
        problems.append(f"stage {job_row['stage']} with {len(arms)} arms")
    if bandit_trials and not in_bandit:
        problems.append("bandit-stage trials in the pruning stage")
    for bs, row in arms.items():
        problem = _arm_problem(job_row, bs, row, trials, succeeded[bs])
        if problem:
            problems.append(problem)
    return problems


def _arm_problem(
    job_row: dict[str, Any],
    bs: int,
    row: dict[str, Any],
    trials: list[dict[str, Any]],
    succeeded: list[dict[str, Any]],
) -> str | None:
    """None when the stored arm is a fit the recorded trials allow."""
    prior = {
        "prior_mean": job_row["mab_prior_mean"],
        "prior_precision": job_row["mab_prior_precision"],
    }
    window = job_row["window_size"]
    explored = [
        bandit.reward(t["cost"])
        for t in trials
        if t["batch_size"] == bs
        and t["type"] == TrialType.EXPLORATION
        and t["status"] == TrialStatus.SUCCEEDED
    ]
    refits = _refit_windows([bandit.reward(t["cost"]) for t in succeeded], window)
    # Fitted when the bandit stage began, then refitted by every result of its
    # batch size that ended in the bandit stage (a bandit-stage trial's surely).
    pulled = any(t["type"] == TrialType.MAB for t in succeeded)
    candidates = [bandit.fit_arm(bs, r, **prior) for r in refits]
    if not pulled:
        candidates.append(bandit.fit_arm(bs, explored, **prior))
    stored = ArmPosterior(
        bs, row["param_mean"], row["param_precision"], row["reward_precision"],
        row["num_observations"],
    )  # fmt: skip
    if any(_same_arm(stored, c) for c in candidates):
        return None
    return f"arm {bs}: {stored} is no fit of its {len(succeeded)} Succeeded trials ({candidates})"


def _refit_windows(rewards: list[float], window: int) -> list[list[float]]:
    """The reward sets the last refit may have used (rewards in trial order).

    Window 0: all of them. Otherwise the refit of the trial that ended last
    used it and the ``window - 1`` highest-numbered others; which one ended
    last is not stored, so each is a candidate.
    """
    if not rewards:
        return []
    if window == 0 or len(rewards) <= window:
        return [rewards]
    windows = []
    for last in range(len(rewards)):
        others = [r for i, r in enumerate(rewards) if i != last]
        windows.append([*(others[-(window - 1) :] if window > 1 else []), rewards[last]])
    # Distinct sets only (order does not change a fit).
    return [list(w) for w in {tuple(sorted(w)) for w in windows}]


def _same_arm(a: ArmPosterior, b: ArmPosterior) -> bool:
    return (
        a.num_observations == b.num_observations
        and _close(a.param_mean, b.param_mean)
        and _close(a.param_precision, b.param_precision)
        and _close(a.reward_precision, b.reward_precision)
    )


def _close(a: float, b: float) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def _acknowledged_problems(
    job_ids: set[str],
    sizes_of: dict[str, dict[int, dict[str, Any]]],
    trials_of: dict[str, list[dict[str, Any]]],
    acknowledged: Acknowledged,
) -> list[str]:
    problems = [f"acknowledged job {j} is missing" for j in acknowledged.jobs - job_ids]
    stored = {(t["job_id"], t["trial_number"]): t for ts in trials_of.values() for t in ts}
    for key, bs in acknowledged.dispatched.items():
        if key not in stored:
            problems.append(f"acknowledged trial {key} is missing")
        elif stored[key]["batch_size"] != bs:
            problems.append(f"trial {key} was dispatched with {bs}, stored {stored[key]}")
    for key, (time, energy, converged) in acknowledged.results.items():
        t = stored.get(key)
        if t is None or t["status"] != TrialStatus.SUCCEEDED:
            problems.append(f"acknowledged result of {key} not recorded: {t}")
        elif (t["time"], t["energy"], t["converged"]) != (time, energy, converged):
            problems.append(f"trial {key} recorded {t}, acknowledged {(time, energy, converged)}")
    for key in acknowledged.ended:
        t = stored.get(key)
        if t is None or t["status"] != TrialStatus.FAILED:
            problems.append(f"acknowledged end of {key} not recorded: {t}")
    return problems


def _short(numbers: list[int]) -> str:
    return str(numbers) if len(numbers) <= 12 else f"{numbers[:6]}...{numbers[-6:]}"
