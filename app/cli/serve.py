"""What `bso serve` runs: uvicorn, with workers that start light and stop gracefully.

Workers (``--workers N`` > 1) are processes that uvicorn's supervisor spawns,
pings, and replaces when they die or stop answering its ping:

- **A light start.** multiprocessing's spawn runs the parent's main script
  again in each child before anything else; for ``bso`` that is the whole CLI
  (typer, rich, httpx, the simulator: about 0.7 s of CPU here, 1.8 s on a
  loaded host), all before the child can answer the supervisor's first ping.
  A child here skips it (:func:`_children_skip_the_cli`) and imports only
  uvicorn, then the app (while already answering pings), as ``uvicorn
  app.main:app`` does.
- **A sane ping timeout.** uvicorn kills a worker that has not answered its
  ping within 5 s by default; on a busy host a starting worker could miss it,
  be killed, and its replacement too. :data:`WORKER_HEALTHCHECK_S` allows a
  starting worker that long. The supervisor waits that long only for a
  worker that does not answer at all (a dead one is noticed at once).
- **A graceful stop.** On SIGTERM (or SIGINT) the supervisor first closes its
  own copy of the listening socket and each worker then closes its copy, so
  new connections are refused at once instead of queueing until the process
  exits; each worker answers the requests it has received (for up to
  ``BSO_SHUTDOWN_TIMEOUT_S``, then cancels them), stops the lease sweep
  between batches (app/sweeper.py), and exits.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from uvicorn.config import LOGGING_CONFIG, STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess

from app.config import Settings
from app.telemetry.log import uvicorn_log_config

# Seconds a worker may take to answer the supervisor's ping; a starting worker
# answers once uvicorn is imported (about 0.2 s of CPU here).
WORKER_HEALTHCHECK_S = 15


def uvicorn_config(settings: Settings, *, host: str, port: int, workers: int) -> uvicorn.Config:
    """The uvicorn configuration of ``bso serve``."""
    return uvicorn.Config(
        "app.main:app",
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level.lower(),
        log_config=uvicorn_log_config(settings.log_level, settings.log_format) or LOGGING_CONFIG,
        access_log=False,  # app.access logs each request once (app/http/observe.py)
        proxy_headers=True,
        # Bounds on header size and on the time to send a request (app/http/limits.py).
        http="app.http.limits:LimitedHttpToolsProtocol",
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
    )


def serve(config: uvicorn.Config) -> None:
    """Serve until SIGTERM or SIGINT: in this process with one worker, else with a supervisor."""
    if config.workers == 1:
        server = uvicorn.Server(config)
        server.run()
        if not server.started:
            sys.exit(STARTUP_FAILURE)
        return
    socket = config.bind_socket()
    with _children_skip_the_cli():
        _Supervisor(config, sockets=[socket]).run()


class _Supervisor(Multiprocess):
    """uvicorn's supervisor, which stops listening as soon as it is told to stop.

    Its copy of the listening socket would otherwise keep the port open while
    the workers drain: new connections would queue unanswered until it exits.
    """

    def handle_term(self) -> None:
        self._stop_listening()
        super().handle_term()

    def handle_int(self) -> None:
        self._stop_listening()
        super().handle_int()

    def _stop_listening(self) -> None:
        for socket in self.sockets:
            socket.close()


@contextmanager
def _children_skip_the_cli() -> Iterator[None]:
    """Spawned children start without running the ``bso`` script (the CLI) again.

    multiprocessing's spawn runs the parent's main module in each child (by
    its ``__spec__``, else its ``__file__``) so that functions defined there
    can be unpickled; uvicorn's child needs none of it. Without either,
    nothing is run, as for an interactive session's children.
    """
    main = sys.modules["__main__"]
    names = ("__file__", "__spec__")
    saved = {name: main.__dict__[name] for name in names if name in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.update(saved)
