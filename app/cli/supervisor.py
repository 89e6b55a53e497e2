"""The supervisor of `bso serve`'s workers: a death is noticed at once, a replacement is a fork.

uvicorn's own supervisor polls: every 0.5 s it pings each worker in turn and
waits up to the health-check timeout for the answer; a worker that died while
a ping waited was noticed only when that timeout ran out (15 s under load),
and its replacement was a fresh interpreter (spawn) that imported the whole
app again (2-3.4 s of CPU on a loaded host). This one:

- **hears of a death from the OS**: it waits on every worker's process
  sentinel (a pipe the kernel closes when the process ends) together with
  the pings' answers and a signal wake-up pipe, so a death wakes it at once;
- **replaces a worker by a fork of itself** after loading the app once
  (uvicorn's ``Config.load``, gunicorn's ``preload_app``): a new worker starts
  with everything imported and serves within milliseconds of CPU, sharing the
  parent's memory pages until it writes them;
- **pings without blocking**: each worker is pinged every
  :data:`PING_INTERVAL_S`, all at once; one whose answer is more than the
  health-check timeout late is hung and is killed and replaced;
- **stops listening first** on SIGTERM or SIGINT: it closes its copy of the
  listening socket, then asks each worker to stop (uvicorn's graceful
  shutdown, with app/http/limits.py's drain of kept-alive connections).

The parent is single-threaded when it forks (nothing here starts a thread and
the app's import starts none), as a fork requires. SIGHUP, SIGTTIN and SIGTTOU
(uvicorn's restart and resize) are not supported: a Kubernetes rollout
replaces pods, and ``--workers`` sets the size.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from uvicorn.config import STARTUP_FAILURE, Config

from app.cli.server import DrainingServer

logger = logging.getLogger("uvicorn.error")

# How often each worker is asked whether it still answers (a hung worker's test;
# a dead one is noticed at once, by its sentinel).
PING_INTERVAL_S = 1.0
_STOP_SIGNALS: dict[int, str] = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}
_IGNORED_SIGNALS: dict[int, str] = {
    signal.SIGHUP: "SIGHUP",
    signal.SIGTTIN: "SIGTTIN",
    signal.SIGTTOU: "SIGTTOU",
}
_fork = multiprocessing.get_context("fork")


class Worker:
    """A worker process: a fork of the supervisor serving on the shared socket."""

    def __init__(
        self, config: Config, sockets: list[socket.socket], close_in_child: list[int]
    ) -> None:
        self.parent_conn, self.child_conn = _fork.Pipe()
        self.process: BaseProcess = _fork.Process(
            target=_run_worker,
            args=(config, sockets, self.child_conn, [*close_in_child, self.parent_conn.fileno()]),
            name="bso-worker",
        )
        self.pid: int | None = None
        self.exitcode: int | None = None
        self.pinged_at: float | None = None  # an unanswered ping's time
        self.next_ping = 0.0

    def start(self) -> None:
        self.process.start()
        self.pid = self.process.pid
        self.child_conn.close()  # the child's end: a dead child then reads as EOF here too
        self.next_ping = time.monotonic() + PING_INTERVAL_S

    def ping(self, now: float) -> None:
        try:
            self.parent_conn.send_bytes(b"ping")
        except OSError:
            return  # it died: its sentinel says so
        self.pinged_at = now

    def read_answer(self, now: float) -> None:
        try:
            self.parent_conn.recv_bytes()
        except (OSError, EOFError):
            return  # it died: its sentinel says so
        self.pinged_at = None
        self.next_ping = now + PING_INTERVAL_S

    def terminate(self) -> None:
        if self.process.exitcode is None and self.process.pid is not None:
            os.kill(self.process.pid, signal.SIGTERM)
            logger.info("Terminated child process [%s]", self.process.pid)

    def kill(self) -> None:
        if self.process.exitcode is None:
            self.process.kill()

    def close(self) -> None:
        """Reap the process (it has ended or been told to) and keep its exit status."""
        self.process.join()
        self.exitcode = self.process.exitcode
        self.parent_conn.close()


def _run_worker(
    config: Config, sockets: list[socket.socket], conn: Connection, close_in_child: list[int]
) -> None:
    """A worker's life: undo what it inherited of the supervisor, answer pings, serve."""
    signal.set_wakeup_fd(-1)
    for signum in (*_STOP_SIGNALS, *_IGNORED_SIGNALS):
        signal.signal(signum, signal.SIG_DFL)  # uvicorn's server installs its own as it starts
    for fd in close_in_child:  # the wake-up pipe and the other workers' ping pipes
        with contextlib.suppress(OSError):
            os.close(fd)
    server = DrainingServer(config)

    def answer_pings() -> None:
        try:
            while True:
                conn.recv_bytes()
                conn.send_bytes(b"started" if server.started else b"starting")
        except (OSError, EOFError):
            return  # the supervisor is gone

    threading.Thread(target=answer_pings, daemon=True).start()
    config.configure_logging()
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets)
    if not server.started:
        sys.exit(STARTUP_FAILURE)


class Supervisor:
    """Keeps ``config.workers`` forked workers serving on ``sockets`` until SIGTERM or SIGINT."""

    def __init__(self, config: Config, sockets: list[socket.socket]):
        self.config = config
        self.sockets = sockets
        self.healthcheck_s = float(config.timeout_worker_healthcheck)
        self.workers: list[Worker] = []
        self.should_exit = False
        self.exit_code = 0
        self._signals: list[int] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # ---------------------------------------------------------------- signals

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals.append(signum)  # the wake-up fd wakes the loop's wait

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (*_STOP_SIGNALS, *_IGNORED_SIGNALS):
            signal.signal(signum, self._on_signal)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum in _STOP_SIGNALS:
                if not self.should_exit:
                    logger.info("Received %s, exiting.", _STOP_SIGNALS[signum])
                    self._stop_listening()
                self.should_exit = True
            else:
                logger.warning("Received %s: not supported, ignored.", _IGNORED_SIGNALS[signum])

    def _stop_listening(self) -> None:
        """Close this copy of the listening socket: the port closes once the workers' do."""
        for sock in self.sockets:
            sock.close()

    # ---------------------------------------------------------------- workers

    def _start_worker(self) -> Worker:
        inherited = [self._wake_r.fileno(), self._wake_w.fileno()]
        inherited += [w.parent_conn.fileno() for w in self.workers if not w.parent_conn.closed]
        worker = Worker(self.config, self.sockets, inherited)
        worker.start()
        return worker

    def _replace(self, index: int, worker: Worker, *, hung: bool) -> None:
        if hung:
            logger.warning(
                "Child process [%s] did not answer within %g s: killed",
                worker.pid,
                self.healthcheck_s,
            )
            worker.kill()
        worker.close()
        if worker.exitcode == STARTUP_FAILURE:
            # It failed before serving: the app or its settings are broken, and
            # every replacement would fail the same way.
            logger.error(
                "Child process [%s] failed to start, stopping the parent process.", worker.pid
            )
            self.should_exit = True
            self.exit_code = STARTUP_FAILURE
            return
        logger.info("Child process [%s] died", worker.pid)
        if not self.should_exit:
            self.workers[index] = self._start_worker()
            logger.info("Started child process [%s]", self.workers[index].pid)

    def _watch(self) -> None:
        """One turn: ping those due, wait for an event or the next ping, act on what happened."""
        now = time.monotonic()
        for worker in self.workers:
            if worker.pinged_at is None and now >= worker.next_ping:
                worker.ping(now)
        due = [w.pinged_at + self.healthcheck_s for w in self.workers if w.pinged_at is not None]
        due += [w.next_ping for w in self.workers if w.pinged_at is None]
        timeout = max(0.0, min(due, default=now + PING_INTERVAL_S) - now)
        waitables: list[Any] = [self._wake_r]
        for worker in self.workers:
            waitables += [worker.process.sentinel, worker.parent_conn]
        ready = set(wait(waitables, timeout))
        if self._wake_r in ready:
            try:
                while self._wake_r.recv(512):
                    pass
            except BlockingIOError:
                pass
        self._handle_signals()
        now = time.monotonic()
        for index, worker in enumerate(list(self.workers)):
            if worker.parent_conn in ready:
                worker.read_answer(now)
            if worker.process.sentinel in ready:
                self._replace(index, worker, hung=False)
            elif worker.pinged_at is not None and now - worker.pinged_at > self.healthcheck_s:
                self._replace(index, worker, hung=True)
            if self.should_exit:
                return

    def run(self) -> int:
        """Serve until told to stop; the exit status (STARTUP_FAILURE: workers cannot start)."""
        logger.info("Started parent process [%s]", os.getpid())
        self._install_signals()
        self.config.load()  # once, here: every worker is a fork with the app already imported
        for _ in range(self.config.workers):
            self.workers.append(self._start_worker())
        while not self.should_exit:
            self._watch()
        for worker in self.workers:
            worker.terminate()
        for worker in self.workers:
            logger.info("Waiting for child process [%s]", worker.pid)
            worker.close()
        logger.info("Stopping parent process [%s]", os.getpid())
        signal.set_wakeup_fd(-1)
        self._wake_r.close()
        self._wake_w.close()
        return self.exit_code
