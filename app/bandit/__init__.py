"""The batch size optimisation algorithm of Zeus (NSDI'23), as pure code.

Jie You, Jae-Won Chung, Mosharaf Chowdhury. "Zeus: Understanding and
Optimizing GPU Energy Consumption of DNN Training." USENIX NSDI 2023.

State in, decision out: nothing here touches a database, HTTP, the clock or
global randomness. The service builds the inputs from rows, passes a numpy
``Generator`` in, and persists what comes out; the offline simulator drives the
very same functions without a service at all.

Two policies, chosen per job: ``zeus``, the paper's algorithm exactly, and
``predictive``, the same with rules that stop doomed runs sooner and drop
clearly expensive batch sizes after each pruning round
(:mod:`app.bandit.predictive`). Under either policy a pruning round that
converges nowhere is walked again and then ends pruning with fallback arms
(:class:`DeadEnd`): a job is never left without a batch size. Jobs of one
group (one per GPU type, say) share what a batch size needs to converge
(:mod:`app.bandit.groups`).
"""

from app.bandit.cost import reward, zeus_cost
from app.bandit.gaussian_ts import choose_arm, fit_arm, fit_arm_from_stats
from app.bandit.groups import (
    CHECK_EPOCH,
    GroupBatchSize,
    GroupKnowledge,
    MemberJudgement,
    group_lesson,
    judge_member,
    sibling_best,
    walk_start,
)
from app.bandit.learning import Lesson, learn
from app.bandit.lease import Lease
from app.bandit.policy import decide
from app.bandit.predictive import (
    SURVIVOR_RATIO,
    LastReport,
    PredictiveVerdict,
    bound_reference,
    epochs_needed,
    judge_report_predictive,
    last_epoch_cost,
    planned_epochs,
    survivors,
)
from app.bandit.pruning import pruning_walk
from app.bandit.stopping import judge_report
from app.bandit.types import (
    ROUND_ATTEMPTS,
    ArmPosterior,
    DeadEnd,
    Decision,
    Exploration,
    FailureReason,
    JobParams,
    Policy,
    PruningState,
    RewardStats,
    Stage,
    StopReason,
    TrialStatus,
    TrialType,
    Verdict,
)

__all__ = [
    "CHECK_EPOCH",
    "ROUND_ATTEMPTS",
    "SURVIVOR_RATIO",
    "ArmPosterior",
    "DeadEnd",
    "Decision",
    "Exploration",
    "FailureReason",
    "GroupBatchSize",
    "GroupKnowledge",
    "JobParams",
    "LastReport",
    "Lease",
    "Lesson",
    "MemberJudgement",
    "Policy",
    "PredictiveVerdict",
    "PruningState",
    "RewardStats",
    "Stage",
    "StopReason",
    "TrialStatus",
    "TrialType",
    "Verdict",
    "bound_reference",
    "choose_arm",
    "decide",
    "epochs_needed",
    "fit_arm",
    "fit_arm_from_stats",
    "group_lesson",
    "judge_member",
    "judge_report",
    "judge_report_predictive",
    "last_epoch_cost",
    "learn",
    "planned_epochs",
    "pruning_walk",
    "reward",
    "sibling_best",
    "survivors",
    "walk_start",
    "zeus_cost",
]
