"""The batch size optimisation algorithm of Zeus (NSDI'23), as pure code.

Jie You, Jae-Won Chung, Mosharaf Chowdhury. "Zeus: Understanding and
Optimizing GPU Energy Consumption of DNN Training." USENIX NSDI 2023.

State in, decision out: nothing here touches a database, HTTP, the clock or
global randomness. The service builds the inputs from rows, passes a numpy
``Generator`` in, and persists what comes out; the offline simulator drives the
very same functions without a service at all.
"""

from app.bandit.cost import reward, zeus_cost
from app.bandit.gaussian_ts import choose_arm, fit_arm, fit_arm_from_stats
from app.bandit.learning import Lesson, learn
from app.bandit.policy import decide
from app.bandit.pruning import NoConvergedBatchSizeError, pruning_walk
from app.bandit.stopping import judge_report
from app.bandit.types import (
    ArmPosterior,
    Decision,
    Exploration,
    JobParams,
    PruningState,
    RewardStats,
    Stage,
    StopReason,
    TrialStatus,
    TrialType,
    Verdict,
)

__all__ = [
    "ArmPosterior",
    "Decision",
    "Exploration",
    "JobParams",
    "Lesson",
    "NoConvergedBatchSizeError",
    "PruningState",
    "RewardStats",
    "Stage",
    "StopReason",
    "TrialStatus",
    "TrialType",
    "Verdict",
    "choose_arm",
    "decide",
    "fit_arm",
    "fit_arm_from_stats",
    "judge_report",
    "learn",
    "pruning_walk",
    "reward",
    "zeus_cost",
]
