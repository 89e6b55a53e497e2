"""Where a server's CPU goes: py-spy sampling and the summary of its stacks by component."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from bench.servers import VENV_BIN

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
        "app code (service, store, bandit, reads)",
        # app/repository and app/database: the modules of older checkouts (bench.compare)
        (
            "app/service",
            "app/store/",
            "app/repository",
            "app/database",
            "app/db.py",
            "app/bandit",
            "app/reads",
        ),
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
