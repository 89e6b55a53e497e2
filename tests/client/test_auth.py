"""A token from the environment (BSO_TOKEN), against ``bso serve`` with BSO_AUTH=required."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bso_client import BatchSizeOptimizer, BSORejectedError

from tests.client.conftest import CountingMeter, read, served_database, spec
from tests.support.server import Server, create_tokens


@pytest.fixture(scope="module")
def auth_server(
    backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, dict[str, str]]]:
    folder = tmp_path_factory.mktemp(f"client-auth-{backend}")
    with served_database(backend, folder, "auth", BSO_AUTH="required") as (server, url):
        env = {"BSO_DATABASE_URL": url, "BSO_AUTH": "required", "PATH": "/usr/bin:/bin"}
        made = create_tokens(
            env,
            folder,
            trainer=["--role", "trainer", "--prefix", "client"],
            other=["--role", "trainer", "--prefix", "other"],
            viewer=["--role", "viewer"],
        )
        yield server, made


def test_the_token_comes_from_bso_token(
    auth_server: tuple[Server, dict[str, str]], job_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, made = auth_server
    monkeypatch.setenv("BSO_URL", server.base_url)
    monkeypatch.setenv("BSO_TOKEN", made["trainer"])
    bso = BatchSizeOptimizer(job=spec(job_id), energy=CountingMeter())  # no url, no token
    with bso.trial() as trial:
        assert trial.report(metric=0.95).stop
    trials = read(server, f"/jobs/{job_id}/trials", token=made["viewer"])["items"]
    assert [t["status"] for t in trials] == ["Succeeded"]


def test_a_token_in_the_url_works_and_is_never_shown(
    auth_server: tuple[Server, dict[str, str]], job_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, made = auth_server
    monkeypatch.delenv("BSO_TOKEN", raising=False)
    host = server.base_url.removeprefix("http://")
    url = f"http://trainer:{made['trainer']}@{host}"
    bso = BatchSizeOptimizer(job=spec(job_id), url=url, energy=CountingMeter())
    assert bso.url == f"http://***@{host}"
    with bso.trial() as trial:
        assert trial.trial_number == 1
    secret = made["trainer"].split("_", 2)[2]  # bso_<id>_<secret>; the secret may hold "_"
    # A refusal's message names the server without the credential.
    down = BatchSizeOptimizer(
        job=spec(job_id), url=f"http://u:{made['trainer']}@127.0.0.1:1", on_unavailable="raise",
        energy=CountingMeter(),
    )  # fmt: skip
    with pytest.raises(Exception, match=r"\*\*\*@127.0.0.1:1") as refused:
        down.trial()
    assert secret not in str(refused.value)


@pytest.mark.parametrize(
    ("who", "status", "message"),
    [
        (None, 401, "Authentication required"),
        ("bad", 401, "not valid"),
        ("viewer", 403, "viewer"),
        ("other", 403, "job_id_prefix 'client'"),
    ],
)
def test_refusals_carry_the_servers_message(
    auth_server: tuple[Server, dict[str, str]],
    job_id: str,
    monkeypatch: pytest.MonkeyPatch,
    who: str | None,
    status: int,
    message: str,
) -> None:
    server, made = auth_server
    monkeypatch.delenv("BSO_TOKEN", raising=False)
    tokens = {"bad": "bso_0123456789ab_" + "A" * 43, **made}
    token = None if who is None else tokens[who]
    bso = BatchSizeOptimizer(job=spec(job_id), url=server.base_url, token=token,
                             energy=CountingMeter())  # fmt: skip
    # Refusals are not unavailability: they raise even with the fallback on.
    with pytest.raises(BSORejectedError, match=message) as refused:
        bso.trial()
    assert refused.value.status_code == status
