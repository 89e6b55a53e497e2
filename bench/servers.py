"""The benchmarks' real processes: databases, ``bso serve`` and hello-world servers, /proc readings.

Nothing here is a test. The benchmarks start real server processes
(``bso serve`` or uvicorn on ``bench/hello_app.py``) on a free local port,
with the same uvicorn settings, and drive them over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
ADMIN_URL = os.environ.get(
    "BSO_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ ports


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -------------------------------------------------------------- databases


async def _admin(statement: str, admin_url: str) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(admin_url)
    connection = await asyncpg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database,
    )
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def admin(statement: str, admin_url: str = ADMIN_URL) -> None:
    """Run one statement on the admin database (CREATE/DROP/ALTER DATABASE ...)."""
    asyncio.run(_admin(statement, admin_url))


def create_postgres_database(
    prefix: str = "bso_bench", admin_url: str = ADMIN_URL, checkout: Path = ROOT
) -> str:
    """Create an empty PostgreSQL database, migrate it to head, return its URL.

    ``checkout``: whose migrations to run. Another checkout (an older commit,
    say) is migrated by its own ``bso migrate``, with its own venv, so that
    its server's /readyz finds the schema at the head it expects.
    """
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"', admin_url))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    if checkout.resolve() == ROOT:
        from app.store.migrate import upgrade_head

        upgrade_head(url)
    else:
        subprocess.run(
            [str(checkout / ".venv" / "bin" / "bso"), "migrate"],
            cwd=checkout,
            env={**os.environ, "BSO_DATABASE_URL": url, "BSO_LOG_LEVEL": "WARNING"},
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return url


def drop_postgres_database(url: str, admin_url: str = ADMIN_URL) -> None:
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', admin_url))


def create_sqlite_database(folder: str) -> str:
    """A migrated SQLite file in ``folder`` (WAL mode is set by the app on connect)."""
    from app.store.migrate import upgrade_head

    url = f"sqlite+aiosqlite:///{folder}/bso_bench_{uuid.uuid4().hex[:8]}.db"
    upgrade_head(url)
    return url


@contextlib.contextmanager
def fresh_database(kind: str, *, prefix: str = "bso_bench", checkout: Path = ROOT) -> Iterator[str]:
    """A fresh, migrated database of ``kind`` (postgres or sqlite), removed afterwards.

    ``checkout`` (PostgreSQL only): migrate with that checkout's migrations.
    """
    if kind == "postgres":
        url = create_postgres_database(prefix, checkout=checkout)
        try:
            yield url
        finally:
            drop_postgres_database(url)
    elif kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bso-bench-") as folder:
            yield create_sqlite_database(folder)
    else:
        raise ValueError(f"unknown database kind {kind!r}")


# ---------------------------------------------------------------- servers


def checkout_label(checkout: Path) -> str:
    """The short commit of a checkout, marked when its app/ has uncommitted changes."""
    found = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    head = found.stdout.strip() or "?"
    dirty = subprocess.run(
        ["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no", "app"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return head + ("+uncommitted app/" if dirty else "")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found.extend(int(p) for p in handle.read().split())
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def status_kib(pid: int, key: str) -> int | None:
    """A ``/proc/<pid>/status`` value in KiB (VmHWM: peak RSS, VmRSS: current RSS)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def postgres_cpu_seconds() -> float:
    """CPU seconds of every postgres process (server and backends) on this machine."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as handle:
                    if handle.read().strip() != "postgres":
                        continue
            except OSError:
                continue
            total += cpu_seconds(int(entry))
    return total


@dataclass
class Server:
    """A server subprocess on 127.0.0.1:port; use as a context manager."""

    name: str
    argv: list[str]
    port: int
    env: dict[str, str]
    ready_path: str
    workers: int
    process: subprocess.Popen[bytes] | None = None
    log_path: str = ""
    cwd: Path = ROOT

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        log = tempfile.NamedTemporaryFile(
            prefix=f"bso-bench-{self.name}-", suffix=".log", delete=False
        )
        self.log_path = log.name
        self.process = subprocess.Popen(
            self.argv,
            env={**os.environ, **self.env},
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early; log:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(self.url + self.ready_path, timeout=2).status_code == 200
                if ready and len(self.worker_pids()) >= self.workers:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout}s; log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError), open(self.log_path, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
        return ""

    def worker_pids(self) -> list[int]:
        """The processes serving requests.

        One worker: uvicorn serves in the launched process itself. More: the
        launched process is a supervisor and the workers are its children
        (forks, or ``multiprocessing.spawn`` children in older checkouts), not
        multiprocessing's resource tracker.
        """
        assert self.process is not None
        if self.workers == 1:
            return [self.process.pid]
        return [
            pid for pid in _children(self.process.pid) if "resource_tracker" not in _cmdline(pid)
        ]

    def all_pids(self) -> list[int]:
        assert self.process is not None
        pids = [self.process.pid]
        for pid in list(pids):
            pids.extend(_children(pid))
        return pids

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.all_pids())

    def peak_rss_mib(self) -> dict[str, float]:
        """VmHWM (peak resident set) per process, in MiB."""
        assert self.process is not None
        peaks: dict[str, float] = {}
        if self.workers > 1:
            supervisor = status_kib(self.process.pid, "VmHWM")
            if supervisor is not None:
                peaks[f"supervisor {self.process.pid}"] = supervisor / 1024
        for pid in self.worker_pids():
            value = status_kib(pid, "VmHWM")
            if value is not None:
                peaks[f"worker {pid}"] = value / 1024
        return peaks

    def __exit__(self, *exc: object) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.log_path)


def bso_server(
    database_url: str,
    *,
    workers: int,
    log_level: str = "WARNING",
    checkout: Path = ROOT,
    name: str = "bso",
    python: Path | None = None,
) -> Server:
    """``bso serve`` exactly as deployed: its uvicorn settings, access log included.

    ``checkout``: serve that checkout's code, with its own ``.venv`` (this
    interpreter's venv for this checkout), from its own folder. ``python``:
    instead, ``python -m app.cli serve`` with that interpreter (a venv that
    holds the dependencies) and the checkout first on ``PYTHONPATH``, e.g.
    to serve this checkout on another Python version.
    """
    port = free_port()
    here = checkout.resolve() == ROOT
    exe = VENV_BIN / "bso" if here else checkout / ".venv" / "bin" / "bso"
    command = [str(exe)] if python is None else [str(python), "-m", "app.cli"]
    env = {
        "BSO_DATABASE_URL": database_url,
        "BSO_LOG_LEVEL": log_level,
        "BSO_HOST": "127.0.0.1",
    }
    if python is not None:
        env["PYTHONPATH"] = str(checkout)
    return Server(
        name=name,
        argv=[*command, "serve", "--port", str(port), "--workers", str(workers)],
        cwd=checkout,
        port=port,
        env=env,
        ready_path="/readyz",
        workers=workers,
    )


def hello_server(*, workers: int, log_level: str = "WARNING", access_log: bool = False) -> Server:
    """bench/hello_app.py under uvicorn with the options ``bso serve`` passes.

    ``bso serve`` calls ``uvicorn.run(..., log_level=..., access_log=False,
    proxy_headers=True)`` (the app logs each request itself, at INFO), so this
    runs without uvicorn's access log too unless told otherwise.
    """
    port = free_port()
    argv = [
        str(VENV_BIN / "uvicorn"),
        "bench.hello_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        log_level.lower(),
        "--proxy-headers",
    ]
    if not access_log:
        argv.append("--no-access-log")
    return Server(
        name="hello", argv=argv, port=port, env={}, ready_path="/healthz", workers=workers
    )
