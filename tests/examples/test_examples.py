"""The three examples train on digits against a real ``bso serve`` and obey its decisions.

Each example runs as a user runs it (``python -m examples.X``, a process of
its own) for a few recurrences; the test then reads what the server recorded
through the read API and checks that it is what the example trained and
printed, and that the dashboard shows the job.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import REPO_ROOT, Server, clean_env, free_port

BATCH_SIZES = (8, 16, 32, 64, 128, 256)
DEFAULT_BATCH_SIZE = 32
MAX_EPOCHS = 12


def run_example(
    module: str,
    server: Server,
    tmp_path: Path,
    job_id: str,
    recurrences: int,
    *options: str,
    launcher: Sequence[str] = (sys.executable,),
) -> dict[str, Any]:
    """Run ``python -m examples.<module>``; its JSON rows and summary. URL and token from env."""
    out = tmp_path / "result.json"
    env = clean_env(BSO_URL=server.base_url, BSO_TOKEN="", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [*launcher, "-m", f"examples.{module}", "--job-id", job_id,
         "--recurrences", str(recurrences), "--seed", "0", "--json", str(out), *options],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "why it stopped" in done.stdout  # the table's header
    assert "The service settled on batch size" in done.stdout
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def read(server: Server, path: str) -> Any:
    response = httpx.get(server.base_url + path, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def check_recurrences(result: dict[str, Any], recurrences: int, max_tries: int = 20) -> None:
    """A row per try; a recurrence tries again only after a try the server stopped short."""
    rows = result["rows"]
    by_recurrence: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_recurrence.setdefault(row["recurrence"], []).append(row)
    assert sorted(by_recurrence) == list(range(1, recurrences + 1))
    for tries in by_recurrence.values():
        assert [row["try_number"] for row in tries] == list(range(1, len(tries) + 1))
        assert all(row["stopped"] != "converged" for row in tries[:-1]), tries
        assert tries[-1]["stopped"] == "converged" or len(tries) == max_tries, tries
    summary = result["summary"]
    assert summary["recurrences"] == recurrences and summary["tries"] == len(rows)
    assert summary["tries_by_recurrence"] == [len(by_recurrence[n]) for n in sorted(by_recurrence)]
    assert summary["spent"] == pytest.approx(sum(row["cost"] for row in rows))


def check_against_server(server: Server, job_id: str, result: dict[str, Any]) -> None:
    """What the example trained and printed is what the server decided and recorded."""
    rows = result["rows"]
    trials = read(server, f"/jobs/{job_id}/trials")["items"]
    assert [t["trial_number"] for t in trials] == [row["trial_number"] for row in rows]
    assert [t["batch_size"] for t in trials] == [row["batch_size"] for row in rows]
    # The pruning walk starts at the default batch size, then goes down the list.
    assert trials[0]["batch_size"] == DEFAULT_BATCH_SIZE
    for trial, row in zip(trials, rows, strict=True):
        # Every run ended because the server said stop (a final report), not by PATCH.
        assert trial["status"] == "Succeeded", trial
        assert trial["converged"] == (row["stopped"] == "converged"), (trial, row)
        assert 1 <= row["epochs"] <= MAX_EPOCHS
        assert row["batch_size"] in BATCH_SIZES
        assert trial["time"] == pytest.approx(row["time_s"]) and trial["time"] > 0
        assert trial["energy"] == pytest.approx(row["energy_j"]) and trial["energy"] > 0
        assert trial["cost"] == pytest.approx(row["cost"])
        if trial["converged"]:
            assert row["accuracy"] >= 0.90
        else:
            assert row["stopped"] != "converged"
    job = read(server, f"/jobs/{job_id}")
    assert job["num_trials"] == len(rows)
    assert result["summary"]["settled_batch_size"] in BATCH_SIZES
    assert result["summary"]["stage"] == job["stage"]
    # The dashboard shows the job and its trials' batch sizes.
    listing = httpx.get(server.base_url + "/dashboard", timeout=10)
    assert listing.status_code == 200 and job_id in listing.text
    page = httpx.get(server.base_url + f"/dashboard/jobs/{job_id}", timeout=10)
    assert page.status_code == 200 and job_id in page.text


@pytest.mark.parametrize(
    ("module", "recurrences"),
    [("plain_pytorch", 4), ("lightning_digits", 3), ("transformers_digits", 3)],
)
def test_example_trains_under_the_servers_decisions(
    module: str, recurrences: int, server: Server, tmp_path: Path
) -> None:
    job_id = f"digits-test-{module.replace('_', '-')}"
    result = run_example(module, server, tmp_path, job_id, recurrences)
    check_recurrences(result, recurrences)
    check_against_server(server, job_id, result)


@pytest.mark.parametrize("module", ["lightning_digits", "transformers_digits", "plain_pytorch"])
def test_a_run_stopped_for_cost_is_trained_again_with_the_next_batch_size(
    module: str, server: Server, tmp_path: Path
) -> None:
    """A first trial at 32 that "converged" at a tiny cost makes every later run too dear:
    the service stops the example's first try (16) for its cost after one epoch, and the
    same recurrence re-fits a fresh model with the next batch size (64), the table
    counting both tries."""
    from bso_client import BatchSizeOptimizer

    from examples import digits

    job_id = f"digits-refit-{module.replace('_', '-')}"
    seed = BatchSizeOptimizer(job=digits.job_spec(job_id), url=server.base_url)
    with seed.trial() as trial:
        assert trial.batch_size == DEFAULT_BATCH_SIZE
        assert trial.report(metric=0.99, time=1e-6, energy=1e-6).converged
    seed.close()
    result = run_example(module, server, tmp_path, job_id, 1, "--max-tries", "2")
    check_recurrences(result, 1, max_tries=2)
    rows = result["rows"]
    assert [(row["try_number"], row["batch_size"], row["epochs"]) for row in rows] == [
        (1, 16, 1),
        (2, 64, 1),
    ]
    assert all(row["stopped"] == "early stop (beta x min cost)" for row in rows), rows
    trials = read(server, f"/jobs/{job_id}/trials")["items"]
    assert [(t["batch_size"], t["status"], t["converged"]) for t in trials] == [
        (32, "Succeeded", True),
        (16, "Succeeded", False),
        (64, "Succeeded", False),
    ]
    for trial, row in zip(trials[1:], rows, strict=True):
        assert trial["trial_number"] == row["trial_number"]
        assert trial["cost"] == pytest.approx(row["cost"])


def test_plain_loop_on_two_ranks_talks_to_the_server_from_rank_0_only(
    server: Server, tmp_path: Path
) -> None:
    """The README's recipe (examples/plain_distributed.py) under torchrun, two gloo ranks.

    Rank 1 opens a trial and reports every epoch too: the server must see one
    trial per recurrence, and both ranks must have stopped together (or the
    run would hang in the next collective and time out).
    """
    job_id = "digits-test-distributed"
    torchrun = (str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node", "2")
    result = run_example("plain_distributed", server, tmp_path, job_id, 2, launcher=torchrun)
    check_recurrences(result, 2)
    check_against_server(server, job_id, result)


def test_lightning_callback_on_two_ddp_processes(server: Server, tmp_path: Path) -> None:
    """Lightning's DDP launcher runs the script again as rank 1: it must never call the server,
    and must train with rank 0's batch size (the example asserts the model's batch size)."""
    job_id = "digits-test-lightning-ddp"
    result = run_example("lightning_digits", server, tmp_path, job_id, 2, "--devices", "2")
    check_recurrences(result, 2)
    check_against_server(server, job_id, result)


def test_without_a_server_the_plain_example_stops_at_the_target_and_prices_runs_right(
    tmp_path: Path,
) -> None:
    """The server unreachable: every run trains at the default batch size, the client stops
    it at the target (not max_epochs), and its row costs what the server would have counted
    (max_power x time, the energy being max_power x time here), "server unreachable"."""
    out = tmp_path / "result.json"
    env = clean_env(
        BSO_URL=f"http://127.0.0.1:{free_port()}", BSO_TOKEN="", BSO_SPOOL_DIR=str(tmp_path)
    )
    done = subprocess.run(
        [sys.executable, "-m", "examples.plain_pytorch", "--job-id", "digits-test-away",
         "--recurrences", "2", "--seed", "0", "--json", str(out)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "UnavailableWarning" in done.stderr
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(row["recurrence"], row["try_number"]) for row in rows] == [(1, 1), (2, 1)]
    for row in rows:
        assert row["trial_number"] is None and row["batch_size"] == DEFAULT_BATCH_SIZE
        assert row["stopped"] == "server unreachable: target reached", row
        assert row["accuracy"] >= 0.90 and row["epochs"] < MAX_EPOCHS
        assert row["energy_source"] == "max_power x time"
        # eta 0.5: 0.5 x energy + 0.5 x max_power x time, with energy = max_power x time.
        assert row["cost"] == pytest.approx(row["energy_j"]) and row["cost"] > 0
    summary = result["summary"]
    assert summary["converged_recurrences"] == 2 and summary["stage"] is None
