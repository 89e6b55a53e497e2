"""What `bso serve` runs: uvicorn, with workers replaced at once and a graceful stop.

With ``--workers N`` > 1 the workers are forks of a supervisor
(app/cli/supervisor.py) that loaded the app once: it hears of a worker's death
from the OS at once and forks a replacement that has nothing left to import.
A worker that does not answer the supervisor's ping within
:data:`WORKER_HEALTHCHECK_S` is hung and is replaced too.

On SIGTERM (or SIGINT) the supervisor first closes its own copy of the
listening socket and each worker then closes its copy, so new connections are
refused at once instead of queueing until the process exits; each worker
answers the requests it has received and any that arrive on its open
connections, each with ``Connection: close`` (app/http/limits.py), for up to
``BSO_SHUTDOWN_TIMEOUT_S``, then cancels what is left, stops the lease sweep
between batches (app/sweeper.py), and exits.
"""

from __future__ import annotations

import sys

import uvicorn
from uvicorn.config import LOGGING_CONFIG, STARTUP_FAILURE

from app.cli.server import DrainingServer
from app.cli.supervisor import Supervisor
from app.config import Settings
from app.telemetry.log import uvicorn_log_config

# Seconds a worker may take to answer the supervisor's ping before it counts as
# hung. Only a hung worker waits this long: a dead one is noticed at once. A
# worker answers from a thread, so a busy event loop does not delay it.
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
        server = DrainingServer(config)
        server.run()
        if not server.started:
            sys.exit(STARTUP_FAILURE)
        return
    socket = config.bind_socket()
    code = Supervisor(config, [socket]).run()
    if code:
        sys.exit(code)
