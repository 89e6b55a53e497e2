"""Zeus's own client, unchanged, against the service running as a real uvicorn server.

Only GPU discovery and the energy monitor are faked; registration, batch size
requests, per-epoch reports and the end-of-training PATCH are Zeus's code
talking HTTP to our server.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from zeus.optimizer.batch_size import client as zeus_client
from zeus.optimizer.batch_size.common import CreatedJob, JobSpec
from zeus.optimizer.batch_size.exceptions import ZeusBSORuntimError, ZeusBSOTrainFailError

from app.store.migrate import upgrade_head
from tests.support.server import (
    Server,
    clean_env,
    create_tokens,
    free_port,
    running_server,
    uvicorn_args,
)

MAX_EPOCHS = 5
MAX_POWER_W = 300  # the fake GPU's power limit: 300_000 mW


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The service as a uvicorn process on a fresh, migrated SQLite file."""
    folder = tmp_path_factory.mktemp("zeus-client")
    url = f"sqlite+aiosqlite:///{folder / 'bso.db'}"
    upgrade_head(url)
    port = free_port()
    env = clean_env(BSO_DATABASE_URL=url, BSO_LOG_LEVEL="WARNING")
    with running_server(uvicorn_args(port), port=port, env=env, log_dir=folder, cwd=folder) as s:
        yield s


class FakeGpus:
    """What the client asks ``get_gpus()``: one NVIDIA A40 limited to 100-300 W."""

    def __len__(self) -> int:
        return 1

    def get_power_management_limit_constraints(self, index: int) -> tuple[int, int]:
        assert index == 0
        return (100_000, 300_000)  # milliwatts

    def get_name(self, index: int) -> str:
        assert index == 0
        return "NVIDIA A40"


class FakeMonitor:
    """A ``ZeusMonitor`` stand-in: each window measures what the test set for the epoch."""

    gpu_indices = [0]

    def __init__(self) -> None:
        self.open: set[str] = set()
        self.epoch = (0.0, 0.0)

    def begin_window(self, name: str) -> None:
        assert name not in self.open, "a window was begun twice"
        self.open.add(name)

    def end_window(self, name: str) -> SimpleNamespace:
        assert name in self.open, "a window was ended that was not begun"
        self.open.remove(name)
        time, energy = self.epoch
        return SimpleNamespace(time=time, total_energy=energy)


@dataclass
class Http:
    """Spies on the client's module-level httpx calls: (method, path, status) in order."""

    calls: list[tuple[str, str, int]] = field(default_factory=list)

    def _spy(self, method: str) -> Callable[..., httpx.Response]:
        def call(url: str, *args: Any, **kwargs: Any) -> httpx.Response:
            response: httpx.Response = getattr(httpx, method)(url, *args, **kwargs)
            self.calls.append((method.upper(), response.request.url.path, response.status_code))
            return response

        return call

    def namespace(self) -> SimpleNamespace:
        return SimpleNamespace(
            post=self._spy("post"), get=self._spy("get"), patch=self._spy("patch")
        )

    def statuses(self, method: str, path: str) -> list[int]:
        return [s for m, p, s in self.calls if (m, p) == (method, path)]


@dataclass
class Zeus:
    """The patched client module's world: fake GPUs, a spy on HTTP, collected end hooks."""

    http: Http
    end_hooks: list[Callable[[], None]]

    def run_end_hooks(self) -> None:
        """What the interpreter would do at exit: Zeus's PATCH /trials."""
        hooks, self.end_hooks[:] = list(self.end_hooks), []
        for hook in hooks:
            hook()


def patched_client(monkeypatch: pytest.MonkeyPatch) -> Zeus:
    """Fake GPUs, spy on HTTP, collect the exit hooks of the client module."""
    http, hooks = Http(), list[Any]()
    monkeypatch.setattr(zeus_client, "get_gpus", lambda ensure_homogeneous=True: FakeGpus())
    monkeypatch.setattr(zeus_client, "httpx", http.namespace())
    # No real atexit handlers: collect them and run them ourselves.
    monkeypatch.setattr(zeus_client, "atexit", SimpleNamespace(register=hooks.append))
    return Zeus(http, hooks)


@contextmanager
def client_of(server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Zeus]:
    """The patched client; afterwards, nothing it did made the server log an error."""
    logged = len(server.log(tail=10**9))
    world = patched_client(monkeypatch)
    yield world
    world.run_end_hooks()
    new_log = server.log(tail=10**9)[logged:]
    assert "Traceback" not in new_log and "ERROR" not in new_log, new_log


@pytest.fixture
def zeus(monkeypatch: pytest.MonkeyPatch, server: Server) -> Iterator[Zeus]:
    with client_of(server, monkeypatch) as world:
        yield world


@dataclass(frozen=True)
class Profile:
    """How training with one batch size goes: per-epoch time and energy, and when
    (if ever) it reaches the target metric."""

    seconds: float
    joules: float
    reaches_target_at: int | None

    def cost(self, epochs: int, eta: float = 0.5) -> float:
        return epochs * (eta * self.joules + (1 - eta) * MAX_POWER_W * self.seconds)


# Per-epoch cost 0.5 * J + 0.5 * 300 W * s: 2000 for 16, 32 and 64, 1700 for 128.
PROFILES = {
    16: Profile(10.0, 1000.0, None),  # never reaches the target
    32: Profile(10.0, 1000.0, 2),  # 4000: the cheapest
    64: Profile(10.0, 1000.0, 3),  # 6000
    128: Profile(8.0, 1000.0, 3),  # 5100
}


@dataclass
class Outcome:
    batch_size: int
    epochs: int
    result: str  # converged, failed (ZeusBSOTrainFailError) or crashed
    message: str = ""


def job_spec(job_id: str | None, **overrides: Any) -> JobSpec:
    values: dict[str, Any] = {
        "job_id": job_id,
        "job_id_prefix": "zeus",
        "batch_sizes": [128, 16, 64, 32],  # the client sorts them
        "default_batch_size": 64,
        "eta_knob": 0.5,
        "beta_knob": 2.0,
        "target_metric": 0.9,
        "max_epochs": MAX_EPOCHS,
        "num_pruning_rounds": 2,
        "mab_num_explorations": 2,
        "mab_seed": 123,
    }
    values.update(overrides)
    return JobSpec(**values)


def train(
    zeus: Zeus,
    server: Server,
    job: JobSpec,
    *,
    crash_after: int | None = None,
    metric: Callable[[Profile, int], float] | None = None,
    server_url: str | None = None,
) -> Outcome:
    """One recurrence of a training script that uses Zeus's BatchSizeOptimizer."""
    monitor = FakeMonitor()
    bso = zeus_client.BatchSizeOptimizer(monitor, server_url or server.base_url, job)
    batch_size = bso.get_batch_size()
    assert bso.get_batch_size() == batch_size  # cached: no second trial
    profile = PROFILES[batch_size]
    bso.on_train_begin()
    outcome = Outcome(batch_size, 0, "")
    for epoch in range(1, MAX_EPOCHS + 1):
        monitor.epoch = (profile.seconds, profile.joules)
        if metric is not None:
            value = metric(profile, epoch)
        else:
            reached = profile.reaches_target_at is not None and epoch >= profile.reaches_target_at
            value = 0.95 if reached else 0.1
        outcome.epochs = epoch
        try:
            bso.on_evaluate(value)
        except ZeusBSOTrainFailError as exc:
            outcome.result, outcome.message = "failed", str(exc)
            break
        if bso.training_finished:
            outcome.result = "converged"
            bso.on_evaluate(value)  # after the end: a no-op on the client
            break
        if crash_after == epoch:
            outcome.result = "crashed"
            break
    zeus.run_end_hooks()  # the script exits
    assert outcome.result, f"the server never said stop: {outcome}"
    assert not monitor.open or outcome.result == "crashed", "a window was left open"
    return outcome


def read(server: Server, path: str) -> Any:
    response = httpx.get(server.base_url + path)
    assert response.status_code == 200, response.text
    return response.json()


def test_zeus_client_walks_pruning_into_the_bandit_with_our_server(
    zeus: Zeus, server: Server
) -> None:
    job = job_spec("zeus-walk")
    outcomes = [
        train(zeus, server, job),  # 1: default 64 first
        train(zeus, server, job, crash_after=1),  # 2: 32, the script dies: PATCH ends it
        train(zeus, server, job),  # 3: 32 again (a Failed trial does not count)
        train(zeus, server, job),  # 4: 16 never converges
        train(zeus, server, job),  # 5: then up: 128
        train(zeus, server, job),  # 6: round 2 starts at the cheapest, 32
        train(zeus, server, job),  # 7: 64
        train(zeus, server, job),  # 8: 128
        train(zeus, server, job),  # 9: bandit: 32 is surely cheapest
        train(zeus, server, job),  # 10
    ]
    assert [(o.batch_size, o.result, o.epochs) for o in outcomes] == [
        (64, "converged", 3),
        (32, "crashed", 1),
        (32, "converged", 2),
        (16, "failed", 5),  # 5 * 2000 exceeds beta 2 * min cost 4000
        (128, "converged", 3),
        (32, "converged", 2),
        (64, "converged", 3),
        (128, "converged", 3),
        (32, "converged", 2),
        (32, "converged", 2),
    ]
    assert "Train failed" in outcomes[3].message

    # Every registration after the first met the identical spec: 200, not 409.
    assert zeus.http.statuses("POST", "/jobs") == [201] + [200] * 9
    assert zeus.http.statuses("GET", "/jobs/batch_size") == [200] * 10
    assert set(zeus.http.statuses("POST", "/report")) == {200}
    assert zeus.http.statuses("PATCH", "/trials") == [200] * 10  # one end hook per recurrence

    trials = read(server, "/jobs/zeus-walk/trials")["items"]
    assert [t["trial_number"] for t in trials] == list(range(1, 11))
    assert [t["batch_size"] for t in trials] == [o.batch_size for o in outcomes]
    assert [t["type"] for t in trials] == ["Exploration"] * 8 + ["MAB"] * 2
    assert [t["status"] for t in trials] == ["Succeeded", "Failed"] + ["Succeeded"] * 8
    assert [t["converged"] for t in trials] == [True, None, True, False] + [True] * 6
    for trial, outcome in zip(trials, outcomes, strict=True):
        if trial["status"] == "Succeeded":
            profile = PROFILES[outcome.batch_size]
            assert trial["time"] == pytest.approx(profile.seconds * outcome.epochs)
            assert trial["energy"] == pytest.approx(profile.joules * outcome.epochs)
            assert trial["cost"] == pytest.approx(profile.cost(outcome.epochs))
            assert trial["end_timestamp"] is not None
        else:
            assert trial["time"] is None and trial["energy"] is None and trial["cost"] is None

    state = read(server, "/jobs/zeus-walk")
    assert state["stage"] == "MAB" and state["exploration"] is None
    assert state["min_cost"] == pytest.approx(4000.0) and state["min_cost_batch_size"] == 32
    assert state["num_trials"] == 10
    arms = {a["batch_size"]: a for a in read(server, "/jobs/zeus-walk/arms")}
    assert sorted(arms) == [32, 64, 128]  # 16 was pruned
    assert {bs: a["num_observations"] for bs, a in arms.items()} == {32: 4, 64: 2, 128: 2}
    assert arms[32]["param_mean"] == pytest.approx(-4000.0)
    assert arms[32]["param_precision"] is None  # identical rewards: infinite precision


def test_zeus_client_parses_our_created_job_with_a_server_made_id(
    zeus: Zeus, server: Server
) -> None:
    job = job_spec(None, job_id_prefix="auto")
    bso = zeus_client.BatchSizeOptimizer(FakeMonitor(), server.base_url, job)
    created: CreatedJob = bso.job
    assert isinstance(created, CreatedJob)
    assert re.fullmatch(r"auto-[0-9a-f]{8}", created.job_id), created.job_id
    assert created.batch_sizes == [16, 32, 64, 128]
    assert created.default_batch_size == 64
    assert created.max_power == MAX_POWER_W
    assert created.number_of_gpus == 1
    assert created.gpu_model == "NVIDIA A40"
    assert created.mab_seed == 123 and created.beta_knob == 2.0
    assert bso.get_batch_size() == 64
    stored = read(server, f"/jobs/{created.job_id}")
    assert stored["gpu_model"] == "NVIDIA A40" and stored["max_power"] == MAX_POWER_W
    assert zeus.http.statuses("POST", "/jobs") == [201]


def test_zeus_client_is_refused_a_different_spec_under_the_same_id(
    zeus: Zeus, server: Server
) -> None:
    zeus_client.BatchSizeOptimizer(FakeMonitor(), server.base_url, job_spec("zeus-conflict"))
    changed = job_spec("zeus-conflict", max_epochs=MAX_EPOCHS + 1)
    with pytest.raises(ZeusBSORuntimError, match=r"409.*max_epochs"):
        zeus_client.BatchSizeOptimizer(FakeMonitor(), server.base_url, changed)
    assert zeus.http.statuses("POST", "/jobs") == [201, 409]


def test_zeus_client_with_no_pruning_and_a_loss_target_goes_straight_to_the_bandit(
    zeus: Zeus, server: Server
) -> None:
    # Lower is better: the "metric" is a loss that falls below 0.2 once the
    # profile reaches its target.
    def loss(profile: Profile, epoch: int) -> float:
        reached = profile.reaches_target_at is not None and epoch >= profile.reaches_target_at
        return 0.1 if reached else 1.0

    job = job_spec(
        "zeus-loss",
        num_pruning_rounds=0,
        higher_is_better_metric=False,
        target_metric=0.2,
        batch_sizes=[32, 64],
        default_batch_size=64,
        beta_knob=None,
    )
    outcomes = [train(zeus, server, job, metric=loss) for _ in range(6)]
    # Every arm is pulled mab_num_explorations = 2 times before any sampling.
    first_four = sorted(o.batch_size for o in outcomes[:4])
    assert first_four == [32, 32, 64, 64], outcomes
    assert all(o.result == "converged" for o in outcomes), outcomes
    assert outcomes[4].batch_size == outcomes[5].batch_size == 32  # certainly cheaper
    trials = read(server, "/jobs/zeus-loss/trials")["items"]
    assert [t["type"] for t in trials] == ["MAB"] * 6
    assert all(t["status"] == "Succeeded" and t["converged"] for t in trials)


# ---------------------------------------------------------- authentication


@pytest.fixture(scope="module")
def auth_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Server, dict[str, str]]]:
    """The service with BSO_AUTH=required, and tokens made by `bso tokens create`."""
    folder = tmp_path_factory.mktemp("zeus-auth")
    url = f"sqlite+aiosqlite:///{folder / 'bso.db'}"
    upgrade_head(url)
    env = clean_env(BSO_DATABASE_URL=url, BSO_LOG_LEVEL="WARNING", BSO_AUTH="required")
    made = create_tokens(
        env,
        folder,
        trainer=["--role", "trainer", "--prefix", "zeus"],
        other=["--role", "trainer", "--prefix", "other"],
        viewer=["--role", "viewer"],
    )
    port = free_port()
    with running_server(uvicorn_args(port), port=port, env=env, log_dir=folder, cwd=folder) as s:
        yield s, made


def test_zeus_client_authenticates_with_a_token_in_its_server_url(
    monkeypatch: pytest.MonkeyPatch, auth_server: tuple[Server, dict[str, str]]
) -> None:
    server, made = auth_server
    host = server.base_url.removeprefix("http://")

    def url(token: str) -> str:
        return f"http://trainer:{token}@{host}"

    job = job_spec("zeus-auth")
    with client_of(server, monkeypatch) as zeus:
        outcome = train(zeus, server, job, server_url=url(made["trainer"]))
        assert (outcome.batch_size, outcome.result) == (64, "converged")
        assert zeus.http.statuses("POST", "/jobs") == [201]
        assert zeus.http.statuses("GET", "/jobs/batch_size") == [200]
        assert set(zeus.http.statuses("POST", "/report")) == {200}
        assert zeus.http.statuses("PATCH", "/trials") == [200]

        refusals = [
            (server.base_url, r"401.*Authentication required"),
            (url("bso_0123456789ab_" + "A" * 43), r"401.*not valid"),
            (url(made["viewer"]), r"403.*viewer role"),
            (url(made["other"]), r"403.*job_id_prefix 'other'"),
        ]
        for server_url, refusal in refusals:
            with pytest.raises(ZeusBSORuntimError, match=refusal):
                zeus_client.BatchSizeOptimizer(FakeMonitor(), server_url, job)

    viewer = {"Authorization": f"Bearer {made['viewer']}"}
    trials = httpx.get(server.base_url + "/jobs/zeus-auth/trials", headers=viewer).json()
    assert [(t["batch_size"], t["status"]) for t in trials["items"]] == [(64, "Succeeded")]
