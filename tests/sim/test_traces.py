from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.sim.traces import (
    GPUS,
    WORKLOADS,
    PathSampler,
    TraceError,
    Workload,
    all_cases,
    build_case,
    find_workload,
    load_traces,
    packaged_traces,
)


def test_the_packaged_traces_hold_the_train_trace_and_four_gpus() -> None:
    traces = packaged_traces()
    assert len(traces.train) == 3759
    assert sorted(traces.power) == sorted(GPUS)
    assert sum(row.target_epoch is None for row in traces.train) == 849  # "nan" rows


def test_there_are_24_cases_at_each_gpus_maximum_power_limit() -> None:
    cases = all_cases()
    assert len(cases) == len(WORKLOADS) * len(GPUS) == 24
    assert {(c.gpu, c.power_limit) for c in cases} == {
        ("a40", 300), ("p100", 250), ("rtx6000", 260), ("v100", 250),
    }  # fmt: skip


def test_a_missing_default_batch_size_falls_back_to_the_largest_below_it() -> None:
    case = build_case(find_workload("imagenet"), "p100")
    assert case.batch_sizes == (64, 128)
    assert case.default_batch_size == 128
    assert case.notes == ("default batch size 256 is not in this GPU's trace: using 128",)
    assert build_case(find_workload("librispeech"), "p100").default_batch_size == 72


def test_a_present_default_batch_size_is_kept_without_a_note() -> None:
    case = build_case(find_workload("squad"), "v100")
    assert case.default_batch_size == 32
    assert case.notes == ()


def test_default_recurrences_are_twice_batch_sizes_times_power_limits() -> None:
    case = build_case(find_workload("squad"), "p100")
    assert case.batch_sizes == (4, 8, 12, 16, 24)
    assert case.num_power_limits == 6
    assert case.default_recurrences == 60


def test_workloads_are_found_by_dataset_or_full_name_in_any_case() -> None:
    assert find_workload("SQuAD").network == "bert_base_uncased"
    assert find_workload("librispeech/deepspeech2").higher_is_better_metric is False
    with pytest.raises(TraceError, match="Unknown workload"):
        find_workload("mnist")


def test_an_unknown_power_limit_is_refused_with_the_available_ones() -> None:
    with pytest.raises(TraceError, match=r"\[125, 150, 175, 200, 225, 250\]"):
        build_case(find_workload("squad"), "p100", power_limit=100)


def test_another_power_limit_changes_the_epoch_profile_and_max_power() -> None:
    low = build_case(find_workload("squad"), "v100", power_limit=150)
    high = build_case(find_workload("squad"), "v100")
    assert low.max_power == 150.0
    assert low.profiles[32] != high.profiles[32]


def test_paths_are_the_runs_in_trace_order() -> None:
    case = build_case(find_workload("cifar100"), "v100")
    assert len(case.paths[1024]) == 10
    assert case.paths[1024][:4] == (74, 71, 80, 71)  # runs 1, 10, 2, 3: file order
    assert all(epoch is not None and epoch > 100 for epoch in case.paths[2048])  # too slow


def test_names_are_matched_case_insensitively(tmp_path: Path) -> None:
    (tmp_path / "summary_train.csv").write_text(
        "dataset,network,batch_size,optimizer,learning_rate,run,target_metric,target_epoch\n"
        "Toy,Net,8,Adadelta,0.1,1,0.5,3\n"
        "Toy,Net,8,Adadelta,0.1,2,0.5,nan\n"
    )
    (tmp_path / "summary_power_v100.csv").write_text(
        "dataset,network,batch_size,optimizer,power_limit,time_per_epoch,average_power\n"
        "toy,net,8,adadelta,250,10.0,200.0\n"
    )
    traces = load_traces(tmp_path)
    workload = Workload(
        "toy", "net", "adadelta", target_metric=0.5, max_epochs=5, default_batch_size=8
    )
    case = build_case(workload, "v100", traces=traces)
    assert case.paths == {8: (3, None)}
    assert case.profiles[8].energy_per_epoch == 2000.0


def test_path_sampling_replays_with_the_same_seed_and_draws_like_pandas_sample() -> None:
    case = build_case(find_workload("cifar100"), "v100")
    first, second = PathSampler(case, 7), PathSampler(case, 7)
    draws = [first.sample(1024) for _ in range(20)]
    assert draws == [second.sample(1024) for _ in range(20)]
    rng = np.random.default_rng(7)  # DataFrame.sample(n=1, random_state=rng)
    runs = case.paths[1024]
    assert draws == [runs[int(rng.choice(len(runs), size=1, replace=False)[0])] for _ in range(20)]
    other = PathSampler(case, 8)
    assert draws != [other.sample(1024) for _ in range(20)]
