"""Shared helpers of the benchmarks: servers, databases, percentiles, /proc readings.

Nothing here is a test. The benchmarks start real server processes
(``bso serve`` or uvicorn on ``bench/hello_app.py``) on a free local port,
with the same uvicorn settings, and drive them over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import numpy as np

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
        from app.migrate import upgrade_head

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
    from app.migrate import upgrade_head

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
        launched process is a supervisor and the workers are its
        ``multiprocessing.spawn`` children (not the resource tracker).
        """
        assert self.process is not None
        if self.workers == 1:
            return [self.process.pid]
        return [
            pid
            for pid in _children(self.process.pid)
            if "multiprocessing.spawn" in _cmdline(pid) or "spawn_main" in _cmdline(pid)
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


# ----------------------------------------------------------- measurements


@dataclass
class Recorder:
    """Latencies (seconds) per endpoint and status-code counts."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def add(self, endpoint: str, seconds: float, status: int) -> None:
        self.latencies[endpoint].append(seconds)
        self.statuses[(endpoint, status)] += 1

    def merge(self, other: Recorder) -> None:
        for endpoint, values in other.latencies.items():
            self.latencies[endpoint].extend(values)
        self.statuses.update(other.statuses)
        self.errors.update(other.errors)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def non_2xx(self) -> dict[str, int]:
        found: Counter[str] = Counter()
        for (endpoint, status), n in self.statuses.items():
            if not 200 <= status < 300:
                found[f"{status} {endpoint}"] += n
        for error, n in self.errors.items():
            found[f"error {error}"] += n
        return dict(found)


def percentiles_ms(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> list[float]:
    if not values:
        return [float("nan")] * len(qs)
    return [float(v) * 1000 for v in np.percentile(np.asarray(values), qs)]


def latency_rows(recorder: Recorder, order: Sequence[str] = ()) -> list[list[str]]:
    """Rows of endpoint, count, p50, p95, p99 (ms), max (ms)."""
    endpoints = [e for e in order if e in recorder.latencies]
    endpoints += sorted(e for e in recorder.latencies if e not in endpoints)
    rows = []
    for endpoint in endpoints:
        values = recorder.latencies[endpoint]
        p50, p95, p99 = percentiles_ms(values)
        rows.append(
            [
                endpoint,
                str(len(values)),
                f"{p50:.2f}",
                f"{p95:.2f}",
                f"{p99:.2f}",
                f"{max(values) * 1000:.1f}",
            ]
        )
    return rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        return (
            "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)) + " |"
        )

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), separator, *(line(r) for r in rows)])


def machine_summary() -> str:
    """One line: CPU model, cores, memory, Python, PostgreSQL server version."""
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = status_kib_meminfo("MemTotal")
    return (
        f"{model}, {os.cpu_count()} CPUs, {mem_kib / 1024 / 1024:.1f} GiB RAM, "
        f"Python {sys.version.split()[0]}"
    )


def status_kib_meminfo(key: str) -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


# ------------------------------------------------------------ lean client


class RawResponse:
    """What the benchmarks read from a response: the status and the JSON body."""

    __slots__ = ("content", "status_code")

    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content

    def json(self) -> Any:
        return json.loads(self.content)


class RawClientError(Exception):
    """The connection broke or the server answered something unparsable."""


class RawClient:
    """A minimal HTTP/1.1 keep-alive client: a pool of ``size`` raw asyncio connections.

    httpx costs about 1.6 ms of CPU per request on this machine's cores (and
    its pool slows down with 32 connections), so with the server on the same
    2 cores it, not the server, sets the hello-world "ceiling". This client
    writes pre-formatted requests and reads ``Content-Length`` (or chunked)
    responses, several times cheaper. Same call shape as ``httpx.AsyncClient``
    for what the benchmarks use.
    """

    def __init__(self, base_url: str, size: int, headers: dict[str, str] | None = None) -> None:
        parsed = urlsplit(base_url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 80
        self.host_header = f"{self.host}:{self.port}".encode()
        self.size = size
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(size)
        self.everyone: set[asyncio.StreamWriter] = set()
        # Sent with every request, e.g. {"authorization": "Bearer ..."}.
        self.extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for writer in list(self.everyone):
            writer.close()
        self.everyone.clear()
        self.idle.clear()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.everyone.add(writer)
        return reader, writer

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> RawResponse:
        if params:
            path = f"{path}?{urlencode(params)}"
        body = b"" if json is None else _dumps(json)
        head = (
            f"{method} {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n{self.extra}\r\n"
        ).encode()
        async with self.slots:
            reused = bool(self.idle)
            reader, writer = self.idle.pop() if reused else await self._connect()
            try:
                writer.write(head + body)
                status, content, keep = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                writer.close()
                self.everyone.discard(writer)
                stale = (isinstance(exc, asyncio.IncompleteReadError) and not exc.partial) or (
                    isinstance(exc, ConnectionResetError | BrokenPipeError)
                )
                if not (reused and stale):
                    raise RawClientError(f"{type(exc).__name__}: {exc}") from exc
                # The server closed this idle keep-alive connection (uvicorn's
                # keep-alive timeout) before reading the request (no answer, or a
                # reset when the close crossed our write): send it again
                # on a fresh one, as HTTP clients do.
                reader, writer = await self._connect()
                try:
                    writer.write(head + body)
                    status, content, keep = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError) as again:
                    writer.close()
                    self.everyone.discard(writer)
                    raise RawClientError(f"{type(again).__name__}: {again}") from again
            if keep:
                self.idle.append((reader, writer))
            else:
                writer.close()
                self.everyone.discard(writer)
        return RawResponse(status, content)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length: int | None = None
    chunked = False
    keep = True
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        elif name == "connection" and value.strip().lower() == "close":
            keep = False
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return status, b"".join(parts), keep
    if length is None:
        return status, await reader.read(), False
    return status, await reader.readexactly(length), keep


# -------------------------------------------------------------- profiling

# Where a sample's time goes: the first rule whose marker occurs anywhere in
# the sample's stack wins (py-spy may root a stack at a resumed coroutine
# rather than at the thread's entry point, so these are whole-stack tests,
# not call-tree nesting). Samples whose innermost frame is the event loop's
# own entry (uvloop runs in C: socket reads and writes, and the Cython
# protocol callbacks of asyncpg and httptools, are invisible to py-spy) are
# counted apart, before any rule: their stacks hold uvicorn's frames too.
EVENT_LOOP = "event loop (uvloop C code: socket I/O, asyncpg/httptools protocol callbacks)"
EVENT_LOOP_LEAVES = ("Runner.run ", "run_until_complete ", "run (uvloop/", "run_forever ")
PROFILE_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("asyncpg pool acquire / release (driver path)", ("asyncpg/pool.py",)),
    ("BEGIN (asyncpg transaction start)", ("Transaction.start", "Transaction.__aenter__")),
    (
        "COMMIT / ROLLBACK",
        ("Transaction.__commit", "Transaction.__rollback", "Transaction.__aexit__"),
    ),
    ("asyncpg statement execution (bind, send, decode)", ("asyncpg/",)),
    ("aiosqlite / sqlite3", ("aiosqlite/", "sqlite3")),
    ("SQLAlchemy pool checkout / checkin / reset", ("sqlalchemy/pool/",)),
    (
        "SQLAlchemy result (cursor, rows, type processors)",
        ("sqlalchemy/engine/result.py", "sqlalchemy/engine/cursor.py", "sqlalchemy/engine/row"),
    ),
    (
        "SQLAlchemy asyncpg adapter, greenlet bridge",
        ("sqlalchemy/dialects/postgresql/asyncpg.py", "_concurrency_py3k", "greenlet"),
    ),
    (
        "SQLAlchemy execute (compiled cache, parameters, events, transactions)",
        ("sqlalchemy/",),
    ),
    (
        "app code (service, repository, db, bandit, reads)",
        ("app/service", "app/repository", "app/database", "app/db.py", "app/bandit", "app/reads"),
    ),
    ("pydantic", ("pydantic",)),
    (
        "HTTP stack (uvicorn, Starlette, FastAPI routing/deps/responses)",
        ("fastapi/", "starlette/", "uvicorn/", "app/main", "app/routes", "app/errors", "anyio/"),
    ),
]
IDLE = "idle (sampled by py-spy, not CPU time)"


def _idle_leaves() -> tuple[str, ...]:
    """Innermost frames that are waits py-spy still samples as active.

    aiosqlite's connection threads block in ``tx.get()`` (a C-level
    SimpleQueue wait) between statements; py-spy counts those samples.
    """
    leaves = []
    with contextlib.suppress(ImportError, OSError, TypeError):
        import inspect

        from aiosqlite import core

        lines, first = inspect.getsourcelines(core._connection_worker_thread)
        for offset, text in enumerate(lines):
            if "tx.get(" in text:
                leaves.append(f"_connection_worker_thread (aiosqlite/core.py:{first + offset})")
    return tuple(leaves)


IDLE_LEAVES = _idle_leaves()


def profile_samples(path: str | Path) -> int:
    """How many samples a py-spy ``--format raw`` file holds."""
    total = 0
    with open(path) as handle:
        for line in handle:
            count = line.rstrip().rpartition(" ")[2]
            if count.isdigit():
                total += int(count)
    return total


def summarize_stacks(
    path: str | Path, busy_samples: float | None = None
) -> list[tuple[str, float]]:
    """Share of the busy samples per category, from py-spy's ``--format raw`` output.

    py-spy leaves out threads it sees idle, but not perfectly. Samples whose
    innermost frame is a known wait (IDLE_LEAVES) are idle. With
    ``busy_samples`` (the process's CPU seconds over the sampling window
    times the rate), samples still beyond that are idle too; they are taken
    off the event-loop category, where a wait for I/O shows up. Idle comes
    last, as a fraction of the busy samples; the other shares are shares of
    the busy samples and add up to 1.
    """
    shares: Counter[str] = Counter()
    total = 0
    with open(path) as handle:
        for line in handle:
            stack, _, count = line.rstrip().rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            total += n
            leaf = stack.rsplit(";", 1)[-1]
            if leaf in IDLE_LEAVES:
                shares[IDLE] += n
                continue
            if leaf.startswith(EVENT_LOOP_LEAVES):
                shares[EVENT_LOOP] += n
                continue
            for name, markers in PROFILE_RULES:
                if any(marker in stack for marker in markers):
                    shares[name] += n
                    break
            else:
                shares["other (stdlib, unattributed frames)"] += n
    if not total:
        return []
    idle = float(shares.pop(IDLE, 0))  # known waits (IDLE_LEAVES)
    if busy_samples is not None and total - idle > busy_samples:
        extra = min(total - idle - busy_samples, shares[EVENT_LOOP])
        shares[EVENT_LOOP] -= extra  # type: ignore[assignment]
        idle += extra
    busy = total - idle
    found = [(name, n / busy) for name, n in shares.most_common()]
    return found + ([(IDLE, idle / busy)] if idle else [])


def top_frames(path: str | Path, limit: int = 25) -> list[tuple[str, float]]:
    """Self time per function (the innermost frame of each sample)."""
    shares: Counter[str] = Counter()
    total = 0
    site = str(Path(np.__file__).parent.parent) + "/"
    with open(path) as handle:
        for line in handle:
            stack, _, count = line.rstrip().rpartition(" ")
            if not count.isdigit():
                continue
            total += int(count)
            frame = stack.split(";")[-1].replace(site, "")
            shares[frame.rsplit(":", 1)[0] + ")" if ":" in frame else frame] += int(count)
    return [(name, n / total) for name, n in shares.most_common(limit)] if total else []


@contextlib.contextmanager
def py_spy(pids: Sequence[int], output_prefix: str, rate: int = 200) -> Iterator[list[str]]:
    """Sample ``pids`` with py-spy (``pip install py-spy``) while the block runs."""
    found = VENV_BIN / "py-spy"
    exe = str(found) if found.exists() else shutil.which("py-spy")
    if exe is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    outputs = [f"{output_prefix}.{pid}.txt" for pid in pids]
    procs = [
        subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--output",
                out,
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid, out in zip(pids, outputs, strict=True)
    ]
    time.sleep(1.0)  # let py-spy attach
    try:
        yield outputs
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            proc.wait(timeout=60)


# ------------------------------------------------------- background load


def machine_cpu_seconds() -> float:
    """CPU seconds all processes have used (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def busy_cores(seconds: float = 1.0) -> float:
    start = machine_cpu_seconds()
    time.sleep(seconds)
    return (machine_cpu_seconds() - start) / seconds


def wait_until_quiet(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (up to ``max_wait`` s) until the machine is nearly idle; return the busy cores.

    Other work on this machine (a test suite, another benchmark) shares the
    same cores and skews every number; the results report how busy other
    processes were during each run.
    """
    deadline = time.monotonic() + max_wait
    busy = busy_cores()
    while busy > threshold and time.monotonic() < deadline:
        print(f"  (machine busy: {busy:.2f} cores used by other processes; waiting)", flush=True)
        time.sleep(4)
        busy = busy_cores()
    if busy > threshold:
        print(f"  WARNING: still {busy:.2f} cores busy; numbers will be skewed", flush=True)
    return busy
