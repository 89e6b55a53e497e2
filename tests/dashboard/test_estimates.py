"""The dashboard's computations: savings, credible bands, outcomes, pruning table."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest

from app.dashboard.estimates import (
    Z_95,
    best_arm,
    cost_band,
    estimate_savings,
    outcome,
    pruning_rows,
)
from app.dashboard.render import job_path, joules, percent
from app.schemas import ArmRead, JobRead, PruningProgress, TrialRead
from tests.helpers import SPEC

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def trial(number: int, batch_size: int, cost: float | None, **fields: Any) -> TrialRead:
    status = fields.pop("status", "Succeeded" if cost is not None else "Failed")
    succeeded = status == "Succeeded"
    return TrialRead(
        job_id="job-1",
        trial_number=number,
        batch_size=batch_size,
        type=fields.pop("type", "Exploration"),
        status=status,
        start_timestamp=NOW,
        end_timestamp=NOW if status != "Dispatched" else None,
        time=1.0 if succeeded else None,
        energy=1.0 if succeeded else None,
        cost=cost,
        converged=fields.pop("converged", True) if succeeded else None,
    )


def job(**fields: Any) -> JobRead:
    base: dict[str, Any] = {
        **SPEC,
        "stage": "MAB",
        "policy": "zeus",
        "min_cost": 100.0,
        "min_cost_batch_size": 32,
        "exploration": None,
        "num_trials": 0,
        "created_at": NOW,
        "updated_at": NOW,
    }
    return JobRead.model_validate({**base, **fields})


def arm(batch_size: int, mean: float, precision: float | None, n: int = 2) -> ArmRead:
    return ArmRead(
        batch_size=batch_size,
        param_mean=mean,
        param_precision=precision,
        reward_precision=precision,
        num_observations=n,
    )


def test_savings_compare_every_finished_run_with_converged_runs_at_the_defaults_mean_cost() -> None:
    trials = [
        trial(1, 64, 300.0),  # default, converged
        trial(2, 64, 500.0),  # default, converged: mean 400
        trial(3, 32, 250.0, converged=False),  # stopped early: spent, but no model
        trial(4, 32, 200.0),
        trial(5, 32, 100.0),
        trial(6, 16, None),  # Failed: no cost, on neither side
        trial(7, 32, None, status="Dispatched"),  # running: not counted yet
    ]
    savings = estimate_savings(trials, default_batch_size=64)
    assert savings.converged_runs == 4
    assert savings.spent == 300 + 500 + 250 + 200 + 100
    assert savings.default_cost == 400.0
    assert savings.baseline == 4 * 400.0
    assert savings.saved == 1600.0 - 1350.0
    assert savings.fraction == pytest.approx(250 / 1600)


def test_savings_are_negative_while_exploration_costs_more_than_it_saved() -> None:
    trials = [trial(1, 64, 100.0), trial(2, 128, 400.0, converged=False)]
    savings = estimate_savings(trials, default_batch_size=64)
    assert savings.saved == 100.0 - 500.0
    assert savings.fraction == pytest.approx(-4.0)


def test_savings_are_unknown_until_the_default_batch_size_has_converged() -> None:
    trials = [trial(1, 64, 900.0, converged=False), trial(2, 32, 100.0)]
    savings = estimate_savings(trials, default_batch_size=64)
    assert (savings.default_cost, savings.baseline, savings.saved, savings.fraction) == (
        None,
        None,
        None,
        None,
    )
    assert savings.spent == 1000.0 and savings.converged_runs == 1
    assert estimate_savings([], default_batch_size=64).saved is None


def test_a_band_is_the_negated_reward_posterior_with_95_percent_of_its_mass() -> None:
    band = cost_band(arm(64, mean=-1000.0, precision=1 / 50.0**2))
    assert band.mean == 1000.0
    assert band.low == pytest.approx(1000.0 - Z_95 * 50.0)
    assert band.high == pytest.approx(1000.0 + Z_95 * 50.0)
    assert pytest.approx(1.959964, abs=1e-6) == Z_95


def test_an_infinite_precision_on_the_wire_is_a_band_of_zero_width() -> None:
    band = cost_band(arm(64, mean=-1000.0, precision=None, n=1))
    assert band.low == band.high == band.mean == 1000.0


def test_a_zero_precision_is_an_unbounded_band() -> None:
    band = cost_band(arm(64, mean=0.0, precision=0.0, n=0))
    assert band.low is None and band.high is None and band.num_observations == 0


def test_the_best_arm_has_the_lowest_posterior_mean_cost() -> None:
    bands = [cost_band(arm(b, m, 1.0)) for b, m in ((16, -300.0), (32, -100.0), (64, -200.0))]
    best = best_arm(bands)
    assert best is not None and best.batch_size == 32
    assert best_arm([]) is None


def test_outcomes_mark_failed_early_stopped_and_running_trials() -> None:
    assert outcome(trial(1, 64, 1.0)) == "converged"
    assert outcome(trial(2, 64, 1.0, converged=False)) == "early-stopped"
    assert outcome(trial(3, 64, None)) == "failed"
    assert outcome(trial(4, 64, None, status="Dispatched")) == "running"


def test_the_pruning_table_follows_each_batch_sizes_explorations_round_by_round() -> None:
    explorations = [
        trial(1, 64, 300.0),
        trial(2, 32, 200.0),
        trial(3, 16, 900.0, converged=False),
        trial(4, 128, None),  # Failed: explored again, not a round result
        trial(5, 128, 500.0, converged=False),
        trial(6, 32, 210.0),
        trial(7, 64, 310.0),
        trial(8, 64, 1.0, type="MAB"),  # not an exploration
    ]
    rows = pruning_rows(job(), explorations, arm_sizes=[32, 64])
    table = {r.batch_size: (r.rounds, r.failed, r.fate) for r in rows}
    assert table == {
        16: (("early-stopped", "not explored"), 0, "pruned"),
        32: (("converged", "converged"), 0, "arm"),
        64: (("converged", "converged"), 0, "arm"),
        128: (("early-stopped", "not explored"), 1, "pruned"),
    }


def test_while_pruning_the_current_candidates_are_in_the_running() -> None:
    first = PruningProgress(round=0, default_batch_size=64, candidates=[16, 32, 64, 128])
    explorations = [
        trial(1, 64, 300.0),
        trial(2, 32, 200.0),
        trial(3, 16, None, status="Dispatched"),
    ]
    rows = pruning_rows(job(stage="Pruning", exploration=first), explorations, arm_sizes=[])
    assert [(r.batch_size, r.rounds[0], r.fate) for r in rows] == [
        (16, "running", "candidate"),
        (32, "converged", "candidate"),
        (64, "converged", "candidate"),
        (128, "not explored", "candidate"),
    ]
    second = PruningProgress(round=1, default_batch_size=32, candidates=[32, 64])
    explorations[2] = trial(3, 16, 900.0, converged=False)
    explorations += [trial(4, 128, 800.0, converged=False), trial(5, 32, 190.0)]
    rows = pruning_rows(job(stage="Pruning", exploration=second), explorations, arm_sizes=[])
    assert [(r.batch_size, r.rounds, r.fate) for r in rows] == [
        (16, ("early-stopped", "not explored"), "pruned"),
        (32, ("converged", "converged"), "candidate"),
        (64, ("converged", "not explored"), "candidate"),
        (128, ("early-stopped", "not explored"), "pruned"),
    ]


def test_numbers_are_shown_with_si_prefixes_and_job_ids_are_encoded_for_a_path() -> None:
    assert joules(66400.0) == "66.4 kJ"
    assert joules(2.5e9) == "2.5 GJ"
    assert joules(12.0) == "12 J"
    assert joules(None) == joules(math.inf) == "-"
    assert percent(0.276) == "+27.6%" and percent(-0.05) == "-5.0%" and percent(None) == "-"
    assert job_path("a/b?c#d %e") == "jobs/a%2Fb%3Fc%23d%20%25e"
