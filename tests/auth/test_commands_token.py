"""Every command that talks to a server takes a token, and none prints one.

`bso simulate --url` against `bso serve` with BSO_AUTH=required: `--token`,
`BSO_TOKEN`, or credentials in the URL, which its title, its --json output
and its errors show as `***`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.support.server import (
    Server,
    bso_args,
    clean_env,
    create_tokens,
    free_port,
    running_server,
)

SIMULATE = ["simulate", "-w", "squad", "-g", "p100", "-n", "1"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    folder = tmp_path_factory.mktemp("commands-token")
    env = clean_env(
        BSO_DATABASE_URL=f"sqlite:///{folder / 'bso.db'}",
        BSO_LOG_LEVEL="WARNING",
        BSO_AUTH="required",
    )
    subprocess.run(bso_args("migrate"), env=env, cwd=folder, check=True, capture_output=True)
    made = create_tokens(env, folder, trainer=["--role", "trainer"])
    port = free_port()
    args = bso_args("serve", "--port", str(port))
    with running_server(args, port=port, env=env, log_dir=folder, cwd=folder) as server:
        yield server, made["trainer"]


def bso(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        bso_args(*args), env=clean_env(**env), capture_output=True, text=True, timeout=120
    )


def test_simulate_takes_a_token_option_or_bso_token(served: tuple[Server, str]) -> None:
    server, token = served
    by_option = bso(*SIMULATE, "--url", server.base_url, "--token", token, "--json")
    assert by_option.returncode == 0, by_option.stderr
    (case,) = json.loads(by_option.stdout)["cases"]
    assert case["error"] is None and case["recurrences_played"] == 1
    by_env = bso(*SIMULATE, "--url", server.base_url, "--json", BSO_TOKEN=token)
    assert by_env.returncode == 0, by_env.stderr
    refused = bso(*SIMULATE, "--url", server.base_url, "--json")
    assert refused.returncode == 1
    (case,) = json.loads(refused.stdout)["cases"]
    assert "401" in case["error"] and "Authentication required" in case["error"]


def test_credentials_in_the_url_are_never_printed(served: tuple[Server, str]) -> None:
    server, token = served
    secret = token.split("_", 2)[2]  # bso_<id>_<secret>: the secret may hold "_" itself
    host = server.base_url.removeprefix("http://")
    url = f"http://trainer:{token}@{host}"
    as_json = bso(*SIMULATE, "--url", url, "--json")
    assert as_json.returncode == 0, as_json.stderr  # Basic credentials from the URL work
    assert json.loads(as_json.stdout)["engine"] == f"http://***@{host}"
    table = bso(*SIMULATE, "--url", url)
    assert table.returncode == 0, table.stderr
    assert f"http://***@{host}" in table.stdout
    down = f"http://trainer:{token}@127.0.0.1:{free_port()}"
    unreachable = bso(*SIMULATE, "--url", down, "--json")
    assert unreachable.returncode == 1
    assert "cannot reach http://***@127.0.0.1" in unreachable.stdout
    jobs = bso("jobs", "list", "--url", down)
    assert jobs.returncode == 1 and "cannot reach the server at http://***@127.0.0.1" in jobs.stderr
    for run in (as_json, table, unreachable, jobs):
        assert secret not in run.stdout + run.stderr
