"""Instructions per hot-loop request, counted by valgrind: the same number on a busy machine.

CPU time per request moves by 10-30% with the neighbours' load on a shared
machine (docs/benchmarks.md); an instruction count does not. This runs
bench/inprocess.py (the hot loop's requests straight into the ASGI app, on a
fresh PostgreSQL database) under ``valgrind --tool=callgrind`` twice, once
with ``--small`` and once with ``--large`` jobs, both at once, and prints

    (instructions with --large jobs - with --small jobs) / requests in between

that is, the user-space instructions of one request of the mix (registration,
dispatch, three reports of which the last ends the trial, end), without the
start-up's. Repeated runs of one checkout agree within about 2% (the event
loop's polls depend on the database's timing), so read steps of a few
percent, and compare checkouts in one run.

Instructions are not seconds (cache misses and the kernel's share of each
round trip are not in them): use it to compare two checkouts, and
bench.compare for requests per second. Needs valgrind (Debian's package);
each run takes 2-3 minutes::

    .venv/bin/python -m bench.instructions
    .venv/bin/python -m bench.instructions --old /tmp/base24
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from bench.servers import ROOT

INPROCESS = ROOT / "bench" / "inprocess.py"
REQUESTS_PER_RECURRENCE = 3 + 3  # registration, dispatch, end; 3 reports (inprocess' --epochs)
RECURRENCES = 12  # inprocess' --recurrences
_COLLECTED = re.compile(rb"Collected : (\d+)")


def _valgrind(checkout: Path, jobs: int) -> subprocess.Popen[bytes]:
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, str(INPROCESS), "--jobs", str(jobs), "--rounds", "1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts in every run
    return subprocess.Popen(
        command, cwd=checkout, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _collected(process: subprocess.Popen[bytes]) -> int:
    _, err = process.communicate()
    found = _COLLECTED.search(err)
    if process.returncode != 0 or found is None:
        raise SystemExit(f"valgrind failed ({process.returncode}):\n{err.decode()[-2000:]}")
    return int(found.group(1))


def per_request(checkout: Path, small: int, large: int) -> float:
    """User-space instructions per hot-loop request of ``checkout`` (its ``app``)."""
    runs = [_valgrind(checkout, small), _valgrind(checkout, large)]
    fewer, more = (_collected(run) for run in runs)
    return (more - fewer) / ((large - small) * RECURRENCES * REQUESTS_PER_RECURRENCE)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, help="another checkout, measured after this one")
    parser.add_argument("--small", type=int, default=2, help="jobs of the shorter run")
    parser.add_argument("--large", type=int, default=8, help="jobs of the longer run")
    args = parser.parse_args(argv)
    if args.large <= args.small:
        parser.error("--large must be more than --small")
    checkouts = [ROOT] + ([args.old.resolve()] if args.old else [])
    counts = {}
    for checkout in checkouts:
        counts[checkout] = per_request(checkout, args.small, args.large)
        print(f"{checkout}: {counts[checkout]:,.0f} instructions per hot-loop request")
    if args.old:
        print(f"this / old: {counts[ROOT] / counts[checkouts[1]]:.3f}")


if __name__ == "__main__":
    main()
