"""Job groups: jobs of one recipe on different GPU types share what is GPU-independent.

How many epochs a batch size needs to reach the target depends on the model,
data and hyperparameters, not on the GPU; only the time and energy of an
epoch do. So the jobs of a group (one per GPU type, say) share, per batch
size, whether it ever converged and how many epochs its converged runs
needed, while each keeps its own costs, stage and arms. Three rules use what
the group knows, and only when it knows something (docs/SPEC.md, section 12):

1. *Never converged*: a batch size that ran somewhere in the group (stopped
   for its cost or out of epochs) and never converged anywhere is treated as
   not converged by the pruning walk, without a trial (:func:`never_converged`).
2. *Group stop*: from epoch :data:`CHECK_EPOCH` on, a run whose predicted cost
   (its cost so far plus its last epoch's cost times the epochs the group's
   converged runs say it still needs) exceeds ``beta`` times the reference
   (``SURVIVOR_RATIO`` times in a pruning round before the last) stops, not
   converged, and counts with the predicted cost (:func:`judge_group`). The
   reference is the smaller of the job's min cost (the rule waits for one)
   and the predicted costs this job recorded for its batch sizes.
3. *Warm start*: a job's pruning walk starts at the best batch size of the
   group's sibling with the most trials, not at the default
   (:func:`walk_start`).

Pooling bandit observations across GPUs, or adopting another GPU's arms, is
deliberately not done: the best batch size differs per GPU.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from app.bandit.predictive import (
    SURVIVOR_RATIO,
    LastReport,
    epochs_needed,
    judge_report_predictive,
    last_epoch_cost,
)
from app.bandit.stopping import judge_report
from app.bandit.types import JobParams, Policy, StopReason, Verdict

# The first epoch a group stop may act on: a real first epoch also carries the
# start-up work (loading data, compiling, warming up), so its cost overstates
# the cost of the epochs that follow.
CHECK_EPOCH = 2


@dataclass(frozen=True, slots=True)
class GroupBatchSize:
    """What a group knows of one batch size, over every GPU of its jobs.

    ``runs``: final reports of trials of it; ``exhausted``: those that spent
    the whole epoch budget without reaching the target; ``converged``: those
    that converged, needing ``min_epochs`` at fewest and ``total_epochs`` in
    all. A run stopped for its cost counts only in ``runs``: it says nothing
    of how many epochs the batch size needs.
    """

    runs: int = 0
    exhausted: int = 0
    converged: int = 0
    min_epochs: int | None = None
    total_epochs: int = 0

    @property
    def mean_epochs(self) -> float | None:
        return self.total_epochs / self.converged if self.converged else None

    @property
    def never_converged(self) -> bool:
        """It ran somewhere and never converged anywhere (stopped for its cost or out of epochs).

        A run stopped for its cost counts too: on the traces a batch size too
        expensive to finish on one GPU is rarely worth a trial on another, and
        counting only exhausted runs gained nothing (bench/groups.py). The
        pruning walk walks a round again without this when it alone would
        leave nothing converged.
        """
        return self.runs > 0 and self.converged == 0

    def add(self, *, converged: bool, exhausted: bool, epochs: int) -> GroupBatchSize:
        """The statistics with one more final report (what the database does atomically)."""
        if not converged:
            return GroupBatchSize(
                self.runs + 1, self.exhausted + int(exhausted), self.converged,
                self.min_epochs, self.total_epochs,
            )  # fmt: skip
        fewest = epochs if self.min_epochs is None else min(self.min_epochs, epochs)
        return GroupBatchSize(
            self.runs + 1, self.exhausted, self.converged + 1, fewest, self.total_epochs + epochs
        )


@dataclass(frozen=True, slots=True)
class GroupKnowledge:
    """What one job of a group reads: the shared statistics and its own predictions.

    ``batch_sizes`` maps a batch size to the group's statistics (missing:
    nothing known); ``predicted`` maps a batch size of this job to the
    predicted cost its last final report recorded on this job's GPU.
    """

    batch_sizes: Mapping[int, GroupBatchSize] = field(default_factory=dict)
    predicted: Mapping[int, float] = field(default_factory=dict)

    def fewest_epochs(self) -> dict[int, int]:
        """Batch size -> fewest epochs any converged run of it needed, on any GPU."""
        return {bs: s.min_epochs for bs, s in self.batch_sizes.items() if s.min_epochs is not None}

    def never_converged(self) -> frozenset[int]:
        return frozenset(bs for bs, s in self.batch_sizes.items() if s.never_converged)


def never_converged(group: GroupKnowledge | None) -> frozenset[int]:
    """Rule 1: the batch sizes the pruning walk treats as not converged without a trial."""
    return frozenset() if group is None else group.never_converged()


def walk_start(params: JobParams, sibling_best: int | None) -> int:
    """Rule 3: where a new job's pruning walk starts.

    ``sibling_best`` is the best batch size (``min_cost_batch_size`` once a
    min cost exists) of the group's other job with the most trials; the
    default when there is none or this job cannot train with it.
    """
    if sibling_best is not None and sibling_best in params.batch_sizes:
        return sibling_best
    return params.default_batch_size


def merged_fewest_epochs(own: Mapping[int, int], group: GroupKnowledge | None) -> dict[int, int]:
    """The job's own fewest epochs per batch size, lowered by the group's."""
    merged = dict(own)
    if group is not None:
        for bs, epochs in group.fewest_epochs().items():
            merged[bs] = min(epochs, merged.get(bs, epochs))
    return merged


def reference_cost(min_cost: float | None, predicted: Mapping[int, float]) -> float | None:
    """The smaller of the job's min cost and its recorded predicted costs (None: neither)."""
    values = [c for c in (min_cost, *predicted.values()) if c is not None and math.isfinite(c)]
    return min(values) if values else None


@dataclass(frozen=True, slots=True)
class GroupVerdict:
    """A group stop's answer: the verdict, and the predicted cost the run counts as."""

    verdict: Verdict
    predicted_cost: float


def predicted_cost(
    batch_size: int,
    *,
    cost: float,
    current_epoch: int,
    last: LastReport | None,
    group: GroupKnowledge,
) -> float | None:
    """A run's cost so far plus its last epoch's cost times the epochs it still needs.

    The epochs needed are the predictive policy's bound
    (:func:`~app.bandit.predictive.epochs_needed`) over the group's converged
    runs on every GPU. None before :data:`CHECK_EPOCH` or when the group
    bounds nothing. Without a previous report the epoch cost is the mean
    cost per epoch so far.
    """
    needed = epochs_needed(batch_size, group.fewest_epochs())
    if needed == 0 or current_epoch < CHECK_EPOCH:
        return None
    if last is not None and last.epoch < current_epoch:
        per_epoch = last_epoch_cost(cost, current_epoch, last)
    else:
        per_epoch = cost / current_epoch
    return cost + per_epoch * max(0, needed - current_epoch)


def judge_group(
    params: JobParams,
    verdict: Verdict,
    *,
    batch_size: int,
    current_epoch: int,
    last: LastReport | None,
    min_cost: float | None,
    pruning_round: int | None,
    group: GroupKnowledge | None,
) -> GroupVerdict | None:
    """Rule 2 on a report the policy said to go on with; None: no group stop.

    Stops the run, not converged, when its predicted cost exceeds
    ``beta * reference`` (``SURVIVOR_RATIO * reference`` for an exploration
    of a pruning round before the last, which could not survive the round).
    Only once the job has a min cost, so that its first pruning round never
    ends with nothing converged because of what other GPUs saw.
    """
    if group is None or verdict.stop_train or params.beta_knob is None or min_cost is None:
        return None  # before this job's first converged run: the paper's rules alone
    predicted = predicted_cost(
        batch_size, cost=verdict.cost, current_epoch=current_epoch, last=last, group=group
    )
    reference = reference_cost(min_cost, group.predicted)
    if predicted is None or reference is None:
        return None
    early_round = pruning_round is not None and pruning_round + 1 < params.num_pruning_rounds
    ratio = SURVIVOR_RATIO if early_round else params.beta_knob
    if predicted <= ratio * reference:
        return None
    message = (
        f"Batch size {batch_size} is predicted, from its job group's converged runs, to cost "
        f"{predicted:.6g} > {ratio} * reference cost {reference:.6g}."
    )
    stopped = Verdict(True, False, verdict.cost, message, StopReason.STOPPED_EARLY)
    return GroupVerdict(stopped, predicted)


def group_lesson(group: GroupBatchSize, verdict: Verdict, *, current_epoch: int) -> GroupBatchSize:
    """The group's statistics of a batch size after a final verdict on one of its runs."""
    return group.add(
        converged=verdict.converged,
        exhausted=verdict.reason is StopReason.MAX_EPOCHS,
        epochs=current_epoch,
    )


def sibling_best(siblings: Sequence[tuple[int, int | None]]) -> int | None:
    """The best batch size of the sibling with the most trials.

    ``siblings`` holds, per other job of the group, its number of trials and
    its best batch size (None: no converged trial yet). Ties go to the first.
    """
    known = [(trials, best) for trials, best in siblings if best is not None]
    if not known:
        return None
    return max(known, key=lambda pair: pair[0])[1]


@dataclass(frozen=True, slots=True)
class MemberJudgement:
    """The answer to a report of a group's job, and what it leaves to keep.

    ``recorded_cost``: what the run counts as if it ended (a prediction's
    stop: the predicted cost); ``last_report``: kept for the next report;
    ``fewest_epochs``: the job's own fewest epochs of a converged run of the
    batch size, this one included; ``predicted_cost``: the prediction rule 2
    made on this report (None: none), recorded for the reference when the
    run ends.
    """

    verdict: Verdict
    recorded_cost: float
    last_report: LastReport
    fewest_epochs: int | None
    predicted_cost: float | None


def judge_member(
    params: JobParams,
    *,
    min_cost: float | None,
    batch_size: int,
    time: float,
    energy: float,
    metric: float,
    current_epoch: int,
    last: LastReport | None,
    fewest_epochs: Mapping[int, int],
    pruning_round: int | None,
    group: GroupKnowledge,
    typical_cost: float | None = None,
) -> MemberJudgement:
    """The job's policy, with what the group knows, then rule 2 if the policy said go on.

    The predictive policy's own rules bound the epochs still needed with the
    group's converged runs (every GPU's) as well as the job's own;
    ``typical_cost`` is passed on to it (:func:`~app.bandit.bound_reference`).
    ``fewest_epochs`` is the job's own map; what comes back for the batch
    size is the job's own too.
    """
    if params.policy is Policy.PREDICTIVE:
        judged = judge_report_predictive(
            params, min_cost=min_cost, batch_size=batch_size, time=time, energy=energy,
            metric=metric, current_epoch=current_epoch, last=last,
            fewest_epochs=merged_fewest_epochs(fewest_epochs, group), pruning_round=pruning_round,
            typical_cost=typical_cost,
        )  # fmt: skip
        verdict, recorded = judged.verdict, judged.recorded_cost
        own = fewest_epochs.get(batch_size)
        if verdict.converged:
            own = current_epoch if own is None else min(own, current_epoch)
    else:
        verdict = judge_report(
            params, min_cost=min_cost, batch_size=batch_size, time=time, energy=energy,
            metric=metric, current_epoch=current_epoch,
        )  # fmt: skip
        recorded, own = verdict.cost, fewest_epochs.get(batch_size)
    here = LastReport(current_epoch, verdict.cost)
    predicted = predicted_cost(
        batch_size, cost=verdict.cost, current_epoch=current_epoch, last=last, group=group
    )
    stopped = judge_group(
        params, verdict, batch_size=batch_size, current_epoch=current_epoch, last=last,
        min_cost=min_cost, pruning_round=pruning_round, group=group,
    )  # fmt: skip
    if stopped is not None:
        return MemberJudgement(stopped.verdict, stopped.predicted_cost, here, own, predicted)
    if verdict.converged:
        predicted = verdict.cost  # what it did cost: the best prediction there is
    return MemberJudgement(verdict, recorded, here, own, predicted)
