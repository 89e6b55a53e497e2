"""Statements per request, per request type of the hot loop, counted by PostgreSQL itself.

For each checkout (this one and, with ``--old``, another one such as the
driver path of 1b1cd18) a fresh database is made with ``ALTER DATABASE ...
SET log_statement = 'all'``, so that the server logs every statement that
any connection to it executes: simple queries (``BEGIN``, ``COMMIT``) and
the Execute of every prepared statement alike, whichever client library
sends them. One ``bso serve`` per checkout (its own venv and migrations)
then gets the hot loop's requests for ``--jobs`` jobs (4 batch sizes, 2
pruning rounds, 3 epochs: 8 pruning recurrences, then the bandit stage), one
request at a time. After every answer the bench itself runs ``SELECT
'bso-mark <n>'`` on its own connection to that database; the server log
lines for that database between two marks belong to one request. One
warm-up job comes first (connections opened, statements prepared and
cached), so the counts are the steady state.

Every statement executed is one round trip, except that asyncpg prepares a
statement (Parse/Describe, not logged) on its first use per connection; in
the steady state every statement is cached, so the counts are the round
trips. Needs read access to the PostgreSQL server's log (``--log``) and a
``log_line_prefix`` with ``%p`` and ``%d`` (Debian's default
``%m [%p] %q%u@%d `` has both).

Examples::

    .venv/bin/python -m bench.statements
    .venv/bin/python -m bench.statements --old ../wt-old --jobs 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.hotloop import job_spec
from bench.load import RawClient
from bench.reporting import markdown_table as table
from bench.servers import ADMIN_URL, ROOT, admin, bso_server, checkout_label, fresh_database

LOG = Path("/var/log/postgresql/postgresql-15-main.log")
EPOCHS = 3
RECURRENCES = 12  # 4 batch sizes x 2 pruning rounds, then 4 in the bandit stage
# A log record's first line: "2026-12-01 16:04:11.708 UTC [2197] postgres@db LOG:  ..."
RECORD = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ \[(\d+)\] (\S*)@(\S+) (\w+):  (.*)"
)
KINDS = (
    "registration of a new job (201)",
    "re-registration (200)",
    "dispatch, pruning stage",
    "dispatch that enters the bandit stage",
    "dispatch, bandit stage",
    "report, not final",
    "final report, pruning stage",
    "final report, bandit stage",
    "PATCH /trials of an ended trial",
)
TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "START TRANSACTION")


async def _drive(server_url: str, db_url: str, prefix: str, jobs: int) -> list[tuple[str, str]]:
    """Run the requests; return (label, mark) per measured request, in order."""
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    marker = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, database=url.database
    )
    marks: list[tuple[str, str]] = []
    counter = 0

    async def mark(label: str | None) -> None:
        nonlocal counter
        counter += 1
        text = f"bso-mark {counter}"
        await marker.execute(f"SELECT '{text}'")
        if label is not None:
            marks.append((label, text))

    try:
        async with RawClient(server_url, 1) as client:

            async def call(method: str, path: str, **kwargs: Any) -> Any:
                response = await client.request(method, path, **kwargs)
                if not 200 <= response.status_code < 300:
                    raise RuntimeError(
                        f"{method} {path}: {response.status_code} {response.content!r}"
                    )
                return response

            await mark(None)
            for index in range(jobs + 1):  # job 0 is the warm-up
                measured = index > 0
                job_id = f"{prefix}-{index}"
                spec = job_spec(job_id, prefix, None)
                trial_types: list[tuple[str, str]] = []  # (dispatch mark, final report mark)
                for recurrence in range(RECURRENCES):
                    created = (await call("POST", "/jobs", json=spec)).status_code == 201
                    await mark(KINDS[0] if created else KINDS[1])
                    trial = (
                        await call("GET", "/jobs/batch_size", params={"job_id": job_id})
                    ).json()
                    await mark("dispatch")
                    dispatch_mark = marks[-1][1]
                    for epoch in range(1, EPOCHS + 1):
                        last = epoch == EPOCHS
                        report = {
                            **trial,
                            "time": epoch * 10.0,
                            "energy": epoch * 2000.0 * (1 + 0.01 * recurrence),
                            "metric": 0.6 if last else 0.5 * epoch / EPOCHS,
                            "current_epoch": epoch,
                        }
                        answer = (await call("POST", "/report", json=report)).json()
                        if answer["stop_train"] != last:
                            raise RuntimeError(f"unexpected answer {answer} to {report}")
                        await mark("final report" if last else KINDS[5])
                    trial_types.append((dispatch_mark, marks[-1][1]))
                    ended = (await call("PATCH", "/trials", json=trial)).json()
                    if ended["status"] != "Succeeded":
                        raise RuntimeError(f"PATCH of an ended trial answered {ended}")
                    await mark(KINDS[8])
                # Which stage each trial ran in, from what the service stored.
                rows = await marker.fetch(
                    "SELECT type FROM trial WHERE job_id = $1 ORDER BY trial_number", job_id
                )
                await mark(None)
                types = [str(r["type"]) for r in rows]
                relabel: dict[str, str] = {}
                for number, ((dispatch_mark, final_mark), kind) in enumerate(
                    zip(trial_types, types, strict=True)
                ):
                    bandit = kind == "MAB"
                    entering = bandit and (number == 0 or types[number - 1] != "MAB")
                    relabel[dispatch_mark] = (
                        KINDS[3] if entering else KINDS[4] if bandit else KINDS[2]
                    )
                    relabel[final_mark] = KINDS[7] if bandit else KINDS[6]
                if not measured:
                    marks.clear()
                    continue
                marks[:] = [(relabel.get(m, label), m) for label, m in marks]
    finally:
        await marker.close()
    return marks


def _count(
    lines: list[str], database: str, marks: list[tuple[str, str]]
) -> dict[str, list[tuple[int, int, list[str]]]]:
    """Per label: (statements, of which transaction control, the statements) per request."""
    at: dict[str, int] = {}
    records: list[tuple[int, str]] = []  # (pid, statement) of the database's statements
    marker_pids: set[int] = set()
    for line in lines:
        found = RECORD.match(line)
        if found is None or found.group(3) != database or found.group(4) != "LOG":
            continue
        message = found.group(5)
        statement = re.sub(r"^(statement|execute [^:]*): ", "", message)
        if statement == message:
            continue  # not a statement (a duration, a checkpoint, ...)
        pid = int(found.group(1))
        mark = re.fullmatch(r"SELECT 'bso-mark (\d+)'", statement)
        if mark is not None:
            marker_pids.add(pid)
            at[f"bso-mark {mark.group(1)}"] = len(records)
            continue
        records.append((pid, statement))
    counts: dict[str, list[tuple[int, int, list[str]]]] = defaultdict(list)
    previous = None
    ordered = sorted(at.items(), key=lambda kv: int(kv[0].split()[1]))
    bounds = {name: (ordered[i - 1][1] if i else 0, pos) for i, (name, pos) in enumerate(ordered)}
    for label, mark_name in marks:
        start, end = bounds[mark_name]
        own = [s for pid, s in records[start:end] if pid not in marker_pids]
        control = sum(
            1 for s in own if s.strip().rstrip(";").upper().startswith(TRANSACTION_CONTROL)
        )
        counts[label].append((len(own), control, own))
        previous = mark_name
    del previous
    return counts


def measure_checkout(checkout: Path, key: str, jobs: int, log: Path) -> dict[str, Any]:
    from sqlalchemy.engine import make_url

    with fresh_database("postgres", prefix=f"bso_stmt_{key}", checkout=checkout) as url:
        database = make_url(url).database
        assert database is not None
        admin(f"ALTER DATABASE \"{database}\" SET log_statement = 'all'", ADMIN_URL)
        with bso_server(url, workers=1, checkout=checkout, name=f"bso-{key}") as server:
            offset = log.stat().st_size
            marks = asyncio.run(_drive(server.url, url, f"stmt-{key}", jobs))
            time.sleep(1.0)  # let the logger write the last lines
            with log.open(errors="replace") as handle:
                handle.seek(offset)
                lines = handle.read().splitlines()
    counts = _count(lines, database, marks)
    return {"counts": counts}


def _cell(values: list[tuple[int, int, list[str]]]) -> str:
    totals = [n for n, _, _ in values]
    control = [c for _, c, _ in values]
    low, high = min(totals), max(totals)
    spread = f" ({low}-{high})" if low != high else ""
    return f"{statistics.median(totals):g}{spread}, of which {statistics.median(control):g} B/C"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Statements per request of each hot-loop request type (PostgreSQL log).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--old",
        type=Path,
        default=ROOT.parent / "wt-old",
        help="the other checkout (with its own .venv); 'none' for this one only",
    )
    parser.add_argument("--jobs", type=int, default=2, help="measured jobs (12 recurrences each)")
    parser.add_argument("--log", type=Path, default=LOG, help="the PostgreSQL server's log file")
    parser.add_argument(
        "--show", action="store_true", help="print the statements of one request of each type"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    checkouts = {"new": ROOT}
    if str(args.old) != "none":
        checkouts["old"] = args.old.resolve()
    results = {
        key: measure_checkout(path, key, args.jobs, args.log) for key, path in checkouts.items()
    }
    header = [
        "request",
        *(f"{k} ({checkout_label(p)}): statements" for k, p in checkouts.items()),
    ]
    rows = []
    for kind in KINDS:
        cells = [kind]
        for key in checkouts:
            values = results[key]["counts"].get(kind)
            cells.append(_cell(values) if values else "-")
        rows.append(cells)
    print(
        "\nStatements per request (median over the measured requests, range if it varies;"
        " B/C: BEGIN/COMMIT):"
    )
    print(table(header, rows))
    per_recurrence = []
    for key in checkouts:
        total = sum(n for values in results[key]["counts"].values() for n, _, _ in values)
        requests = sum(len(values) for values in results[key]["counts"].values())
        per_recurrence.append(
            f"{key}: {total} statements / {requests} requests = {total / requests:.2f}"
        )
    print("\nover all measured requests: " + "; ".join(per_recurrence))
    if args.show:
        for kind in KINDS:
            for key in checkouts:
                values = results[key]["counts"].get(kind)
                if not values:
                    continue
                print(f"\n### {kind}: {key}")
                for statement in values[-1][2]:
                    with contextlib.suppress(Exception):
                        statement = " ".join(statement.split())
                    print(f"  {statement[:300]}")


if __name__ == "__main__":
    main()
