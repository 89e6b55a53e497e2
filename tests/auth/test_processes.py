"""BSO_AUTH=required on `bso serve` with two worker processes: tokens from the console
script, `bso jobs --token`, /metrics, and a revocation that every worker honours."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import (
    Server,
    bso_args,
    clean_env,
    create_tokens,
    free_port,
    running_server,
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    folder = tmp_path_factory.mktemp("auth-serve")
    env = clean_env(
        BSO_DATABASE_URL=f"sqlite:///{folder / 'bso.db'}",
        BSO_LOG_LEVEL="WARNING",
        BSO_AUTH="required",
    )
    subprocess.run(bso_args("migrate"), env=env, cwd=folder, check=True, capture_output=True)
    made = create_tokens(env, folder, viewer=["--role", "viewer"], doomed=["--role", "viewer"])
    port = free_port()
    args = bso_args("serve", "--port", str(port), "--workers", "2")
    with running_server(args, port=port, env=env, log_dir=folder, cwd=folder) as server:
        yield server, {**made, "folder": str(folder), "db": env["BSO_DATABASE_URL"]}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def bso_jobs_list(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    command = bso_args("jobs", "list", "--url", server.base_url, *args)
    return subprocess.run(command, env=clean_env(), capture_output=True, text=True, timeout=60)


def test_bso_jobs_and_metrics_take_a_viewer_token(
    served: tuple[Server, dict[str, str]],
) -> None:
    server, made = served
    listed = bso_jobs_list(server, "--token", made["viewer"])
    assert listed.returncode == 0, listed.stderr
    refused = bso_jobs_list(server)
    assert refused.returncode == 1 and "401" in refused.stderr
    assert httpx.get(server.base_url + "/metrics").status_code == 401
    metrics = httpx.get(server.base_url + "/metrics", headers=bearer(made["viewer"]))
    assert metrics.status_code == 200 and "bso_http_requests_total" in metrics.text
    assert httpx.get(server.base_url + "/healthz").status_code == 200


def test_every_worker_refuses_a_revoked_token_within_5_seconds(
    served: tuple[Server, dict[str, str]],
) -> None:
    server, made = served
    token = made["doomed"]
    # Each request on a connection of its own, so both workers take some.
    for _ in range(20):
        assert httpx.get(server.base_url + "/jobs", headers=bearer(token)).status_code == 200
    revoke = subprocess.run(
        bso_args("tokens", "revoke", "doomed"),
        env=clean_env(BSO_DATABASE_URL=made["db"]),
        cwd=Path(made["folder"]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert revoke.returncode == 0, revoke.stderr
    revoked = time.monotonic()
    answers: list[tuple[float, int]] = []
    while (elapsed := time.monotonic() - revoked) < 5:
        status = httpx.get(server.base_url + "/jobs", headers=bearer(token)).status_code
        answers.append((elapsed, status))
        time.sleep(0.05)
    # BSO_AUTH_CACHE_S is 2: from then on, every worker has read the row again.
    late = [status for elapsed, status in answers if elapsed > 2.5]
    assert late and set(late) == {401}, answers
