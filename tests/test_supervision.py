"""`bso serve`'s supervisor and drain, under load: a death noticed at once, nothing accepted lost.

Real processes and real sockets. The assertions are on events and their order,
read from the server's JSON log and from what each client saw; the one time
bound (a death noticed within 1 s) is the promise itself, measured from the
kill to the supervisor's log line, and generous for an event the OS reports.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tests.support.server import (
    Server,
    bso_args,
    clean_env,
    free_port,
    json_lines,
    run_off_loop,
    running_server,
    worker_processes,
)

NOTICED_WITHIN_S = 1.0  # the promise: the OS tells the supervisor (docs/operations.md)
WITHIN_S = 90  # "it happens": a shared, loaded 2-core machine


def serve_args(port: int) -> list[str]:
    return bso_args("serve", "--workers", "2", "--host", "127.0.0.1", "--port", str(port))


def server_env(tmp_path: Path, **more: str) -> dict[str, str]:
    return clean_env(
        BSO_DATABASE_URL=f"sqlite:///{tmp_path}/bso.db",
        BSO_LOG_LEVEL="INFO",
        BSO_LOG_FORMAT="json",
        **more,
    )


def index_of(lines: list[dict[str, Any]], message: str, pid: int | None = None) -> int | None:
    for index, line in enumerate(lines):
        if line.get("message") == message and (pid is None or line.get("pid") == pid):
            return index
    return None


def wait_for(condition: Any, what: str, server: Server) -> Any:
    deadline = time.monotonic() + WITHIN_S
    while not (found := condition()):
        assert time.monotonic() < deadline, f"not within {WITHIN_S} s: {what}\n{server.log()}"
        time.sleep(0.02)
    return found


def serving(server: Server) -> set[int]:
    lines = json_lines(server)
    started = {
        line["pid"] for line in lines if line.get("message") == "Application startup complete."
    }
    return started & worker_processes(server.process.pid)


def keep_alive_load(base_url: str, stop: threading.Event, clients: int) -> list[threading.Thread]:
    def load() -> None:
        with httpx.Client(base_url=base_url, timeout=30) as http:
            while not stop.is_set():
                try:
                    http.get("/healthz")
                except httpx.TransportError:
                    time.sleep(0.01)  # its worker was killed: a new connection next

    threads = [threading.Thread(target=load, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    return threads


def answered_by(server: Server, base_url: str) -> int:
    """Which worker answered a request on a fresh connection (its access log line's pid)."""
    response = httpx.get(base_url + "/healthz", timeout=30)
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]

    def logged() -> int | None:
        for line in json_lines(server):
            if line.get("request_id") == request_id and line.get("logger") == "app.access":
                return int(line["pid"])
        return None

    return int(wait_for(logged, "the request's log line", server))


def test_a_killed_worker_is_noticed_at_once_and_a_fork_replaces_it(tmp_path: Path) -> None:
    port = free_port()
    with running_server(
        serve_args(port), port=port, env=server_env(tmp_path), log_dir=tmp_path
    ) as server:
        wait_for(lambda: len(serving(server)) == 2, "two workers serving", server)
        stop = threading.Event()
        load = keep_alive_load(server.base_url, stop, clients=4)
        try:
            victim, survivor = sorted(serving(server))
            time.sleep(0.5)  # under load
            killed_at = time.time()
            os.kill(victim, signal.SIGKILL)
            died = wait_for(
                lambda: index_of(json_lines(server), f"Child process [{victim}] died"),
                "the death noticed",
                server,
            )
            lines = json_lines(server)
            noticed_after = datetime.fromisoformat(lines[died]["time"]).timestamp() - killed_at
            assert noticed_after < NOTICED_WITHIN_S, f"noticed {noticed_after:.2f} s after the kill"
            # Then a replacement is started, starts up, and serves requests.
            new = wait_for(lambda: serving(server) - {victim, survivor}, "a replacement", server)
            (replacement,) = new
            lines = json_lines(server)
            started = index_of(lines, f"Started child process [{replacement}]")
            ready = index_of(lines, "Application startup complete.", replacement)
            assert started is not None and ready is not None
            assert died < started < ready
            wait_for(
                lambda: answered_by(server, server.base_url) == replacement,
                "the replacement answering a request",
                server,
            )
        finally:
            stop.set()
            for thread in load:
                thread.join(60)
        print(f"noticed {noticed_after:.3f} s after the kill")
        # The only death is the kill's: nothing else was replaced.
        assert [
            line["message"] for line in json_lines(server) if str(line["message"]).endswith(" died")
        ] == [f"Child process [{victim}] died"]


# ------------------------------------------------------------- the drain


@dataclass
class Seen:
    answered: int = 0
    refused: int = 0
    lost: list[str] = field(default_factory=list)
    answered_after_refusal: int = 0  # on a connection opened before the SIGTERM


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, bool]:
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
    length = next(
        int(line.split(":", 1)[1])
        for line in head.split("\r\n")
        if line.startswith("content-length:")
    )
    await reader.readexactly(length)
    return int(head.split()[1]), "connection: close" in head


async def _client(
    port: int, seen: Seen, stop: asyncio.Event, refused: asyncio.Event, pause: float
) -> None:
    """Requests on a kept-alive connection, then on new ones; a closed one is not reused."""
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    opened_before_refusal = False
    while not stop.is_set():
        if conn is not None and (conn[0].at_eof() or conn[1].is_closing()):
            conn[1].close()
            conn = None  # the server ended it before a request was sent: as httpx, not reused
        if conn is None:
            try:
                conn = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                seen.refused += 1
                await asyncio.sleep(0.05)
                continue
            opened_before_refusal = not refused.is_set()
        reader, writer = conn
        sent_after_refusal = refused.is_set()
        try:
            status, close = await asyncio.wait_for(_request(reader, writer), 60)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
            seen.lost.append(repr(error))  # sent on an accepted connection: no answer
            writer.close()
            conn = None
            continue
        assert status == 200, status
        seen.answered += 1
        if sent_after_refusal and opened_before_refusal:
            seen.answered_after_refusal += 1
        if close:
            writer.close()
            conn = None
        await asyncio.sleep(pause)


async def _idle_until_refused(port: int, seen: Seen, refused: asyncio.Event) -> None:
    """One answer on a new connection, then idle until the port refuses, then one more on it.

    The drain's promise itself, without a race: the busy and slow clients may
    all have sent their last request before the refusal was seen (a loaded
    machine takes longer than their pauses to close the port).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        status, close = await asyncio.wait_for(_request(reader, writer), 60)
        assert (status, close) == (200, False)
        seen.answered += 1
        await refused.wait()
        try:  # well inside the 5 s keep-alive timeout, which would close it
            status, close = await asyncio.wait_for(_request(reader, writer), 60)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
            seen.lost.append(repr(error))
            return
        assert status == 200 and close, (status, close)  # answered, and the connection ends
        seen.answered += 1
        seen.answered_after_refusal += 1
    finally:
        writer.close()


async def _until_refused(port: int) -> None:
    """Return once connecting to ``port`` is refused."""
    for _ in range(WITHIN_S * 20):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        writer.close()
        await asyncio.sleep(0.05)
    raise AssertionError(f"connections still accepted {WITHIN_S} s after SIGTERM")


def test_sigterm_under_keep_alive_load_answers_every_request_it_accepted(tmp_path: Path) -> None:
    port = free_port()
    env = server_env(tmp_path, BSO_SHUTDOWN_TIMEOUT_S="30")
    with running_server(serve_args(port), port=port, env=env, log_dir=tmp_path) as server:
        wait_for(lambda: len(serving(server)) == 2, "two workers serving", server)

        async def run() -> Seen:
            seen = Seen()
            stop, refused = asyncio.Event(), asyncio.Event()
            # Busy clients, and slow ones whose connections sit idle between requests
            # (well inside the 5 s keep-alive timeout) when the SIGTERM comes.
            clients = [_client(port, seen, stop, refused, pause) for pause in [0.0] * 6 + [0.5] * 6]
            waiters = [_idle_until_refused(port, seen, refused) for _ in range(3)]
            tasks = [asyncio.create_task(client) for client in clients + waiters]
            await asyncio.sleep(2)
            server.process.send_signal(signal.SIGTERM)  # the main process only, as kubelet
            await _until_refused(port)
            refused.set()
            exited = asyncio.to_thread(server.process.wait, WITHIN_S)
            assert await exited == 0, server.log()
            stop.set()
            await asyncio.gather(*tasks)
            return seen

        seen = run_off_loop(run())
    print(seen)
    assert seen.lost == [], seen
    assert seen.answered > 0 and seen.refused > 0
    # Kept-alive connections stayed open through the drain: requests sent on
    # them after the port was closed were answered (uvicorn closed them at once):
    # at least the three that waited for the refusal.
    assert seen.answered_after_refusal >= 3, seen
