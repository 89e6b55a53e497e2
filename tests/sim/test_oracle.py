from __future__ import annotations

import math

from app.sim.traces import expected_costs, oracle_batch_size
from tests.sim.synthetic import toy_case


def test_expected_cost_is_a_converging_run_plus_the_retries_it_takes() -> None:
    costs = expected_costs(toy_case(), eta_knob=0.5)
    # One epoch costs 0.5 * 1000 J + 0.5 * 100 W * 10 s = 1000.
    assert costs[16] == 4000.0
    assert costs[8] == 7000.0
    # 32 converges half the time: 3 epochs, plus on average one failed run of 10 epochs.
    assert costs[32] == 3000.0 + 10_000.0


def test_the_oracle_is_the_cheapest_expected_batch_size() -> None:
    assert oracle_batch_size(toy_case(), eta_knob=0.5) == 16


def test_a_batch_size_that_never_converges_costs_infinity() -> None:
    case = toy_case({8: (None, 11), 16: (4,), 32: (2,)})  # 11 > max_epochs
    costs = expected_costs(case, eta_knob=0.5)
    assert costs[8] == math.inf
    assert oracle_batch_size(case, eta_knob=0.5) == 32


def test_ties_go_to_the_smaller_batch_size() -> None:
    case = toy_case({8: (4,), 16: (4,), 32: (4,)})
    assert oracle_batch_size(case, eta_knob=0.5) == 8
