"""Workers killed and servers restarted under load: how fast a worker is replaced, what is lost.

Two measurements of ``bso serve --workers 2`` on PostgreSQL, with CPU burners
on the same cores and keep-alive clients calling ``GET /readyz`` (the app and
the database) without pause:

- **kills**: ``kill -9`` of a worker, ``--kills`` times; for each, the time
  from the kill to the supervisor's "Child process [pid] died" line
  (noticed) and to a new worker's "Application startup complete." line
  (replaced), read from the server's JSON log;
- **rolling**: a rolling restart of two servers (two pods): SIGTERM to the
  first, start it again on its port, then the second; each client keeps one
  connection to one server and goes to the other when a connection is
  refused. Every request ends as answered, refused (connecting failed: the
  client knows it was never received) or lost (sent on an accepted
  connection, no answer: the client cannot know whether it was processed).
  A client reuses a connection only if the server has not closed it (as
  httpx does), so "lost" counts only real races.

``--gunicorn`` serves with the alternative evaluated instead (gunicorn's
arbiter, uvicorn-worker, ``--preload``; install both first). ``--checkout
PATH`` serves another checkout (its ``.venv``) for a before/after comparison:
``python -m bench.supervision --checkout /work/main``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.load import busy_cores
from bench.reporting import machine_summary
from bench.servers import (
    ROOT,
    VENV_BIN,
    Server,
    bso_server,
    checkout_label,
    free_port,
    fresh_database,
)


def burn_cpu(count: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def run_while_burning(burners: int, measure: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``measure()`` with ``burners`` processes spinning on the CPU, stopped afterwards."""
    burning = burn_cpu(burners)
    try:
        asyncio.run(measure())
    finally:
        for burner in burning:
            burner.kill()
            burner.wait()


def log_lines(server: Server) -> list[dict[str, object]]:
    lines = []
    with open(server.log_path, errors="replace") as handle:
        for line in handle:
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
    return lines


# gunicorn's text log: "[time] [pid] [LEVEL] message".
_GUNICORN_STARTED = re.compile(r"\[(\d+)\] \[INFO\] Application startup complete\.")


def started_pids(server: Server) -> set[int]:
    """Workers that logged their startup (bso serve's JSON lines, or gunicorn's text)."""
    found = set()
    for line in log_lines(server):
        if line.get("message") == "Application startup complete.":
            found.add(int(str(line["pid"])))
    with open(server.log_path, errors="replace") as handle:
        found.update(int(pid) for pid in _GUNICORN_STARTED.findall(handle.read()))
    return found


def died(server: Server, pid: int) -> bool:
    """Whether the supervisor logged the death of ``pid`` (uvicorn's or gunicorn's arbiter)."""
    if any(line.get("message") == f"Child process [{pid}] died" for line in log_lines(server)):
        return True
    with open(server.log_path, errors="replace") as handle:
        return f"Worker (pid:{pid}) was sent SIGKILL" in handle.read()


def gunicorn_server(database_url: str) -> Server:
    """The alternative evaluated: gunicorn's arbiter, uvicorn-worker, the app preloaded.

    Needs ``pip install gunicorn uvicorn-worker`` (not dependencies of bso).
    """
    port = free_port()
    metrics = tempfile.mkdtemp(prefix="bso-bench-metrics-")
    return Server(
        name="gunicorn",
        argv=[
            str(VENV_BIN / "gunicorn"),
            "app.main:app",
            "--worker-class",
            "uvicorn_worker.UvicornWorker",
            "--workers",
            "2",
            "--preload",
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "info",
            "--graceful-timeout",
            "20",
        ],
        port=port,
        env={"BSO_DATABASE_URL": database_url, "PROMETHEUS_MULTIPROC_DIR": metrics},
        ready_path="/readyz",
        workers=2,
    )


# ------------------------------------------------------------------ load


@dataclass
class Outcomes:
    answered: int = 0
    refused: int = 0
    lost: int = 0
    lost_detail: list[str] = field(default_factory=list)


async def _one_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int
) -> tuple[int, bool]:
    writer.write(f"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(
        (name.strip().lower(), value.strip())
        for name, value in (line.split(":", 1) for line in lines[1:] if ":" in line)
    )
    await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("connection", "").lower() == "close"


async def client(ports: list[int], first: int, stop: asyncio.Event, outcomes: Outcomes) -> None:
    """One keep-alive connection at a time, to one server; to the other when refused."""
    index = first
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    while not stop.is_set():
        port = ports[index]
        if conn is not None and (conn[0].at_eof() or conn[1].is_closing()):
            conn[1].close()
            conn = None  # the server closed it: not reused, as httpx would not
        if conn is None:
            try:
                conn = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                outcomes.refused += 1
                index = 1 - index if len(ports) > 1 else index
                await asyncio.sleep(0.01)
                continue
        reader, writer = conn
        try:
            status, close = await asyncio.wait_for(_one_request(reader, writer, port), 60)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
            outcomes.lost += 1
            outcomes.lost_detail.append(f"{port}: {type(error).__name__}")
            writer.close()
            conn = None
            continue
        outcomes.answered += 1 if status == 200 else 0
        if close:
            writer.close()
            conn = None
    if conn is not None:
        conn[1].close()


# --------------------------------------------------------------- the runs


def run_kills(
    checkout: Path, database: str, kills: int, burners: int, clients: int, gunicorn: bool
) -> None:
    if gunicorn:
        server = gunicorn_server(database)
    else:
        server = bso_server(database, workers=2, log_level="INFO", checkout=checkout)
        server.env["BSO_LOG_FORMAT"] = "json"
    noticed: list[float] = []
    replaced: list[float] = []
    with server:
        stop = asyncio.Event()
        outcomes = Outcomes()

        async def measure() -> None:
            tasks = [
                asyncio.create_task(client([server.port], 0, stop, outcomes))
                for _ in range(clients)
            ]
            for _ in range(kills):
                await asyncio.sleep(1.0)
                seen = started_pids(server)
                victim = sorted(set(server.worker_pids()) & seen)[0]
                killed_at = time.monotonic()
                os.kill(victim, signal.SIGKILL)
                notice = ready = None
                while ready is None or notice is None:
                    await asyncio.sleep(0.01)
                    now = time.monotonic() - killed_at
                    if now > 120:
                        raise RuntimeError(f"no replacement in 120 s:\n{server.log_tail()}")
                    if notice is None and died(server, victim):
                        notice = now
                    if ready is None and started_pids(server) - seen:
                        ready = now
                noticed.append(notice)
                replaced.append(ready)
                print(f"  kill {len(noticed)}: noticed {notice:.2f} s, replaced {ready:.2f} s")
            stop.set()
            await asyncio.gather(*tasks)

        run_while_burning(burners, measure)
    print(
        f"kill -9 of a worker, {kills} kills, {burners} CPU burners, {clients} clients:\n"
        f"  noticed:  median {statistics.median(noticed):.2f} s, worst {max(noticed):.2f} s\n"
        f"  replaced: median {statistics.median(replaced):.2f} s, worst {max(replaced):.2f} s\n"
        f"  requests: {outcomes.answered} answered, {outcomes.refused} refused, "
        f"{outcomes.lost} lost"
    )


def _restart(server: Server) -> None:
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=120)
    server.process = None
    server.__enter__()


def run_rolling(
    checkout: Path, database: str, clients: int, burners: int, rounds: int, gunicorn: bool
) -> None:
    if gunicorn:
        servers = [gunicorn_server(database) for _ in (0, 1)]
    else:
        servers = [
            bso_server(database, workers=2, checkout=checkout, name=f"bso{i}") for i in (0, 1)
        ]
    outcomes = Outcomes()
    with servers[0], servers[1]:
        ports = [s.port for s in servers]
        stop = asyncio.Event()

        async def measure() -> None:
            tasks = [
                asyncio.create_task(client(ports, i % 2, stop, outcomes)) for i in range(clients)
            ]
            await asyncio.sleep(2)
            for _ in range(rounds):
                for server in servers:
                    await asyncio.to_thread(_restart, server)
                    await asyncio.sleep(1)
            stop.set()
            await asyncio.gather(*tasks)

        run_while_burning(burners, measure)
    print(
        f"rolling restart of two servers x{rounds}, {clients} keep-alive clients, "
        f"{burners} CPU burners:\n"
        f"  requests: {outcomes.answered} answered, {outcomes.refused} refused connections, "
        f"{outcomes.lost} lost (sent on an accepted connection, no answer)"
    )
    if outcomes.lost_detail:
        print("  lost:", ", ".join(sorted(set(outcomes.lost_detail))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["kills", "rolling", "both"], nargs="?", default="both")
    parser.add_argument("--checkout", type=Path, default=ROOT)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="rolling restarts of both servers")
    parser.add_argument("--burners", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--gunicorn", action="store_true", help="serve with gunicorn + uvicorn-worker, preloaded"
    )
    args = parser.parse_args()
    print(machine_summary())
    what = "gunicorn + uvicorn-worker --preload" if args.gunicorn else "bso serve"
    print(f"serving {args.checkout} at {checkout_label(args.checkout)} with {what}")
    print(f"machine busy before the run: {busy_cores(2):.2f} cores (other work on it)")
    with fresh_database("postgres", checkout=args.checkout) as database:
        if args.what in ("kills", "both"):
            run_kills(
                args.checkout, database, args.kills, args.burners, args.clients, args.gunicorn
            )
        if args.what in ("rolling", "both"):
            run_rolling(
                args.checkout, database, args.clients, args.burners, args.rounds, args.gunicorn
            )


if __name__ == "__main__":
    main()
