"""Run the service as a real process (uvicorn or ``bso``) and create databases.

Tests that need real TCP, several worker processes or the console script use
these; everything else goes through the in-process ASGI client of conftest.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ADMIN_URL = os.environ.get(
    "BSO_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)


def worker_name() -> str:
    """The xdist worker ("gw0", ...) or "main": keeps databases of workers apart."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without any BSO_/ZEUS_BSO_ setting, plus overrides.

    PROMETHEUS_MULTIPROC_DIR goes too: ``bso serve`` makes its own unless told.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("BSO_", "ZEUS_BSO_", "PROMETHEUS_MULTIPROC_DIR"))
        or key == "BSO_TEST_POSTGRES_URL"
    }
    env.update(overrides)
    return env


async def _admin(statements: Sequence[str]) -> None:
    # CREATE/DROP DATABASE cannot run inside a transaction block.
    engine = create_async_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            for statement in statements:
                await connection.exec_driver_sql(statement)
    finally:
        await engine.dispose()


def run_off_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on a helper thread: works inside a running event loop too.

    On the main thread, asyncio.run would unset its event loop when it ends, and
    every later async test of this worker would fail with "no current event loop".
    """
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _run_admin(*statements: str) -> None:
    run_off_loop(_admin(statements))


def fresh_postgres_database(name: str) -> str:
    """Drop and create an empty PostgreSQL database; returns its asyncpg URL."""
    _run_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(name: str) -> None:
    _run_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Server:
    """A started server process and where it listens."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]


def wait_until_answers(
    server: Server, path: str, *, status: int = 200, timeout: float = 30.0
) -> httpx.Response:
    """Poll ``path`` until it answers ``status``; fail with the server's log otherwise."""
    deadline = time.monotonic() + timeout
    last: str = "no answer"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(
                f"server exited with {server.process.returncode} before answering {path}:\n"
                f"{server.log()}"
            )
        try:
            response = httpx.get(server.base_url + path, timeout=2.0)
        except httpx.TransportError as exc:
            last = repr(exc)
        else:
            if response.status_code == status:
                return response
            last = f"{response.status_code} {response.text}"
        time.sleep(0.1)
    raise AssertionError(f"{path} did not answer {status} in {timeout}s ({last}):\n{server.log()}")


def stop(process: subprocess.Popen[bytes], *, timeout: float = 10.0) -> None:
    """Stop a process started with its own session, and its children (uvicorn workers)."""
    with suppress(ProcessLookupError):  # the whole group, even if the parent already died
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)


@contextmanager
def running_server(
    args: Sequence[str],
    *,
    port: int,
    env: Mapping[str, str],
    log_dir: Path,
    ready_path: str = "/healthz",
    cwd: Path | None = None,
    timeout: float = 30.0,
) -> Iterator[Server]:
    """Start ``args`` (a server listening on ``port``), wait for ``ready_path``, stop it after.

    It runs in ``cwd``, by default ``log_dir``: not the checkout, whose ``.env``
    (an operator's, for compose) the server would read.
    """
    log_path = log_dir / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(args),
            cwd=cwd or log_dir,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: workers are stopped with it
        )
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_until_answers(server, ready_path, timeout=timeout)
        yield server
    finally:
        stop(process)


def json_lines(server: Server) -> list[dict[str, Any]]:
    """The server's log lines that are JSON (BSO_LOG_FORMAT=json), parsed; others skipped."""
    lines = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def uvicorn_args(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]


def child_processes(pid: int) -> dict[int, str]:
    """Direct children of ``pid`` with their command lines (Linux /proc)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its ")".
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children[int(entry.name)] = cmdline
    return children


def worker_processes(pid: int) -> set[int]:
    """The workers of ``bso serve --workers N`` started as ``pid``: its children (forks)."""
    return {
        child
        for child, cmdline in child_processes(pid).items()
        if "resource_tracker" not in cmdline
    }


def bso_args(*args: str) -> list[str]:
    """The installed console script, as an operator runs it."""
    return [str(VENV_BIN / "bso"), *args]


def create_tokens(env: Mapping[str, str], cwd: Path, **roles: Sequence[str]) -> dict[str, str]:
    """``bso tokens create NAME OPTIONS...`` per keyword (``name=["--role", ...]``); the tokens."""
    made = {}
    for name, options in roles.items():
        created = subprocess.run(
            bso_args("tokens", "create", name, *options),
            env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        made[name] = created.stdout.splitlines()[-1]
    return made
