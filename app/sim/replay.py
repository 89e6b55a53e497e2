"""The recurrence loop: one simulated training script per recurrence, and the baselines.

Rules (chosen to match Zeus's ``zeus/_legacy/simulate.py`` wherever the wire
API allows; ``bench/parity_zeus_legacy.py`` measures what remains):

- each try asks the engine for a batch size, then draws a training path for it
  (:class:`~app.sim.traces.PathSampler`, one draw per try, Zeus's draw);
- it trains epoch by epoch, reporting cumulative ``time = t_epoch * k`` and
  ``energy = t_epoch * watts * k`` (Zeus's arithmetic) and a metric that
  crosses the target exactly at the path's reach epoch, until ``stop_train``;
  then it ends the trial (PATCH /trials), as the Zeus client does on exit;
- a try that did not converge is retried, at most 20 tries per recurrence;
  every try's cost counts, so does a recurrence that gave up.

Deviations from Zeus's simulator, forced by the wire API and SPEC: a run
stopped by the cost bound stops *after* the epoch whose report crossed
``beta * min_cost`` (Zeus's simulator stops before it, knowing the future), so
it also runs that epoch when even one epoch exceeds the bound (Zeus skips the
run and feeds the optimiser a ``100 * beta * min_cost`` penalty); the
service's ``min_cost`` is the cheapest converged trial (Zeus's simulator uses
the whole recurrence's cost, failed tries included); a first recurrence that
does not converge is retried (Zeus's simulator raises). With the default knobs
and seed 1, 23 of the 24 cases still choose exactly the batch sizes of Zeus's
simulator; the other (cifar100@a40) differs through the ``min_cost`` rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from app.schemas import JobSpec
from app.sim.protocol import Engine, EngineError, TrialId
from app.sim.results import Baseline, CaseResult, MetricCurve, ReplaySettings, TryRecord
from app.sim.traces import Case, PathSampler, converges, expected_costs, oracle_batch_size

MAX_TRIES = 20


def metric_at(
    case: Case, epoch: int, reach_epoch: int | None, curve: MetricCurve = MetricCurve.LINEAR
) -> float:
    """The validation metric reported after ``epoch``.

    The trace only records when a run first reached the target, so the metric
    is on the wrong side of the target before the reach epoch and exactly the
    target from it on; a run that never reaches it closes in towards
    ``max_epochs + 1``. The remaining gap shrinks linearly with the epochs
    left, or (``concave``) with their square: fast at first, then flat, so
    that a rule extrapolating the metric cannot lean on a straight line.
    """
    workload = case.workload
    target = workload.target_metric
    if reach_epoch is not None and epoch >= reach_epoch:
        return target
    horizon = reach_epoch if reach_epoch is not None else workload.max_epochs + 1
    left = (horizon - epoch) / horizon
    gap = max(abs(target), 1.0) * (left if curve is MetricCurve.LINEAR else left * left)
    return target - gap if workload.higher_is_better_metric else target + gap


def job_spec(case: Case, settings: ReplaySettings) -> JobSpec:
    """The spec a training script of ``case`` registers."""
    workload = case.workload
    return JobSpec(
        job_id_prefix=f"sim-{workload.dataset}-{case.gpu}",
        batch_sizes=list(case.batch_sizes),
        default_batch_size=case.default_batch_size,
        max_power=case.max_power,
        gpu_model=case.gpu,
        number_of_gpus=1,
        eta_knob=settings.eta_knob,
        beta_knob=settings.beta_knob,
        target_metric=workload.target_metric,
        higher_is_better_metric=workload.higher_is_better_metric,
        max_epochs=workload.max_epochs,
        window_size=settings.window_size,
        mab_seed=settings.seed,
        policy=settings.policy,
    )


async def train(
    engine: Engine,
    case: Case,
    trial: TrialId,
    reach_epoch: int | None,
    curve: MetricCurve = MetricCurve.LINEAR,
) -> tuple[int, bool]:
    """Train ``trial`` along a path until told to stop; returns (epochs, converged)."""
    epoch, converged = 0, False
    while epoch < case.workload.max_epochs:
        epoch += 1
        time, energy = case.time_energy(trial.batch_size, epoch)
        answer = await engine.report(
            trial,
            time=time,
            energy=energy,
            metric=metric_at(case, epoch, reach_epoch, curve),
            current_epoch=epoch,
        )
        if answer.stop_train:
            converged = answer.converged
            break
    await engine.end_trial(trial)
    return epoch, converged


@dataclass(slots=True)
class _Played:
    tries: list[TryRecord] = field(default_factory=list)
    per_recurrence: list[float] = field(default_factory=list)
    gave_up: int = 0

    def close(self, recurrence: int) -> None:
        """Book the cost of ``recurrence``: all its tries, failed ones included."""
        self.per_recurrence.append(sum(t.cost for t in self.tries if t.recurrence == recurrence))


async def _recurrence(
    engine: Engine,
    case: Case,
    job_id: str,
    settings: ReplaySettings,
    sampler: PathSampler,
    out: _Played,
) -> None:
    index = len(out.per_recurrence) + 1
    for attempt in range(1, MAX_TRIES + 1):
        trial = await engine.next_trial(job_id)
        reach = sampler.sample(trial.batch_size)
        epochs, converged = await train(engine, case, trial, reach, settings.metric_curve)
        time, energy = case.time_energy(trial.batch_size, epochs)
        cost = case.run_cost(trial.batch_size, epochs, settings.eta_knob)
        out.tries.append(
            TryRecord(index, attempt, trial.trial_number, trial.batch_size, epochs, time,
                      energy, cost, converged)
        )  # fmt: skip
        if converged:
            break
    else:
        out.gave_up += 1
    out.close(index)


async def replay(
    engine: Engine,
    case: Case,
    settings: ReplaySettings,
    *,
    on_recurrence: Callable[[int], None] | None = None,
) -> CaseResult:
    """Register the job and play its recurrences against ``engine``.

    An engine error (e.g. no batch size converged in a pruning round) ends the
    replay early; the result says why, and a recurrence cut short still counts
    the tries it made.
    """
    recurrences = settings.recurrences_for(case)
    sampler = PathSampler(case, settings.seed)
    played, error = _Played(), None
    try:
        job_id = await engine.register(job_spec(case, settings))
        for index in range(1, recurrences + 1):
            await _recurrence(engine, case, job_id, settings, sampler, played)
            if on_recurrence is not None:
                on_recurrence(index)
    except EngineError as exc:
        index = len(played.per_recurrence) + 1
        if played.tries and played.tries[-1].recurrence == index:
            played.close(index)
        error = f"stopped in recurrence {index}: {exc}"
    default, oracle = baselines(case, settings, recurrences)
    return CaseResult(
        case, settings, recurrences, tuple(played.tries), tuple(played.per_recurrence),
        default, oracle, played.gave_up, error,
    )  # fmt: skip


def fixed_batch_size_costs(
    case: Case, batch_size: int, *, eta_knob: float, seed: int | None, recurrences: int
) -> tuple[float, ...]:
    """Per-recurrence cost of always training ``batch_size`` (retries, no early stopping)."""
    sampler, max_epochs = PathSampler(case, seed), case.workload.max_epochs
    costs = []
    for _ in range(recurrences):
        total = 0.0
        for _ in range(MAX_TRIES):
            reach = sampler.sample(batch_size)
            done = converges(case, reach)
            total += case.run_cost(batch_size, reach if done and reach else max_epochs, eta_knob)
            if done:
                break
        costs.append(total)
    return tuple(costs)


def baselines(case: Case, settings: ReplaySettings, recurrences: int) -> tuple[Baseline, Baseline]:
    """Always the default batch size, and always the oracle's, on the same seed."""
    expected = expected_costs(case, settings.eta_knob)

    def baseline(batch_size: int) -> Baseline:
        per_recurrence = fixed_batch_size_costs(
            case, batch_size, eta_knob=settings.eta_knob, seed=settings.seed,
            recurrences=recurrences,
        )  # fmt: skip
        return Baseline(batch_size, expected[batch_size], per_recurrence)

    return baseline(case.default_batch_size), baseline(oracle_batch_size(case, settings.eta_knob))
