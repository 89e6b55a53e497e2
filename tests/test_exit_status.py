"""`bso serve`'s exit status after SIGTERM (docs/upgrades.md, SPEC 8 "Shutdown").

0 with several workers (tests/test_shutdown.py, tests/test_k8s.py), and 143
(128 + SIGTERM, as a shell reports a process that SIGTERM ended) with one:
what an orchestrator logs as the container's exit code. A hang is a failure
here, not something a fixture kills quietly.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from app.store.migrate import upgrade_head
from tests.support.server import bso_args, clean_env, free_port, running_server

EXIT_WITHIN_S = 60  # BSO_SHUTDOWN_TIMEOUT_S (20 s by default) with room for a loaded machine


def test_one_worker_exits_143_after_sigterm(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'bso.db'}"
    upgrade_head(url)
    port = free_port()
    env = clean_env(BSO_DATABASE_URL=url, BSO_LOG_LEVEL="WARNING", BSO_WORKERS="1")
    args = bso_args("serve", "--host", "127.0.0.1", "--port", str(port))
    with running_server(
        args, port=port, env=env, log_dir=tmp_path, cwd=tmp_path, ready_path="/readyz"
    ) as server:
        server.process.send_signal(signal.SIGTERM)  # the main process only, as kubelet
        try:
            status = server.process.wait(EXIT_WITHIN_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {EXIT_WITHIN_S} s after SIGTERM") from None
        assert status == 143, f"exit status {status}\n{server.log()}"
        assert "Traceback" not in server.log(100_000), server.log()
