from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from app.cli.simulate import register
from app.sim.results import TryRecord
from app.sim.summary import compress_sequence


def invoke(cli: typer.Typer, args: list[str]) -> Result:
    """Run the command on a worker thread: its asyncio.run must not touch the tests' loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(CliRunner().invoke, cli, args).result()


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """bso"""

    register(app)
    return app


def test_json_results_of_a_pure_replay(cli: typer.Typer) -> None:
    args = [
        "simulate",
        "-w",
        "sentiment140",
        "-g",
        "p100",
        "--engine",
        "pure",
        "-n",
        "12",
        "--json",
    ]
    result = invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["engine"] == "pure"
    (case,) = data["cases"]
    assert case["default_batch_size"] == 64
    assert case["notes"] == ["default batch size 128 is not in this GPU's trace: using 64"]
    assert case["recurrences_played"] == 12
    assert case["settings"]["seed"] == 1
    assert {"savings_vs_default_pct", "cost_over_oracle", "settled_at_recurrence"} <= set(case)


def test_the_summary_table_and_a_plot(cli: typer.Typer, tmp_path: Path) -> None:
    png = tmp_path / "run.png"
    args = ["simulate", "-w", "squad", "-g", "p100", "--engine", "pure", "-n", "12"]
    result = invoke(cli, [*args, "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert "squad@p100" in result.stdout
    assert "24 16 12 8 4x2 8 12 16 24" in result.stdout
    assert png.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "args",
    [
        ["-w", "mnist"],
        ["-g", "h100"],
        ["--power-limit", "123"],
        ["--engine", "pure", "--url", "http://localhost:1"],
        ["--beta", "0"],
    ],
)
def test_bad_options_are_usage_errors(cli: typer.Typer, args: list[str]) -> None:
    result = invoke(cli, ["simulate", "--engine", "pure", *args])
    assert result.exit_code == 2


def test_sequences_are_run_length_encoded_with_failed_tries_marked() -> None:
    tries = [TryRecord(1, 1, 1, 64, 1, 1, 1, 1, True)] * 2 + [
        TryRecord(2, 1, 3, 32, 1, 1, 1, 1, False)
    ]
    assert compress_sequence(tries) == "64x2 32!"


def test_the_command_takes_a_policy_and_a_metric_curve(cli: typer.Typer) -> None:
    args = ["simulate", "-w", "squad", "-g", "p100", "-n", "12", "--json", "--engine", "pure"]
    result = invoke(cli, [*args, "--policy", "predictive", "--metric-curve", "concave"])
    assert result.exit_code == 0, result.output
    (case,) = json.loads(result.stdout)["cases"]
    assert case["settings"]["policy"] == "predictive"
    assert case["settings"]["metric_curve"] == "concave"


def test_the_service_engine_runs_the_predictive_policy_too(cli: typer.Typer) -> None:
    args = ["simulate", "-w", "squad", "-g", "p100", "-n", "4", "--json", "--engine", "service"]
    result = invoke(cli, [*args, "--policy", "predictive"])
    assert result.exit_code == 0, result.output
    (case,) = json.loads(result.stdout)["cases"]
    assert case["settings"]["policy"] == "predictive"
    assert case["error"] is None
