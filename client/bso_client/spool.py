"""Reports that got no answer, kept on disk and sent in order when the server answers again.

A report (or a trial's end) that the server did not answer, or refused with
401/403, is appended to a small spool: one JSON-lines file per server and job
in ``BSO_SPOOL_DIR``, else ``$XDG_CACHE_HOME/bso-client/spool``, else
``~/.cache/bso-client/spool``. It holds at most ``MAX_RECORDS`` records (the
oldest go first, with a warning). The records are sent, in the order they were
made, before the next report of the same run and at the next start of the
same job; the server's consistency rules decide what each may still change
(docs/SPEC.md section 13). Records of a trial the server no longer holds (its
lease expired, or it was deleted) are dropped, with one warning saying how
many. ``Replay`` decides without I/O, so the sync and async clients share it.
A disk that cannot be written never stops training: the report is then lost,
with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bso_client.errors import BSOError, BSORejectedError, UnavailableWarning, warn
from bso_client.http import Call
from bso_client.trial import Decision

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per job is assumed
    fcntl = None  # type: ignore[assignment]

MAX_RECORDS = 1000  # per server and job; a report is about 250 bytes
TrialKey = tuple[str, int]


def spool_dir(given: str | os.PathLike[str] | None = None) -> Path:
    """Where spools live: ``given``, ``BSO_SPOOL_DIR``, or the user's cache folder."""
    if given is not None:
        return Path(given)
    if os.environ.get("BSO_SPOOL_DIR"):
        return Path(os.environ["BSO_SPOOL_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "bso-client" / "spool"


@dataclass(frozen=True)
class Record:
    """One kept call: a report (``POST /report``) or an end (``PATCH /trials``)."""

    kind: str  # "report" or "end"
    body: dict[str, Any]

    @property
    def key(self) -> TrialKey:
        return str(self.body["job_id"]), int(self.body["trial_number"])

    def call(self) -> Call:
        if self.kind == "end":
            return Call("PATCH", "/trials", json=self.body)
        return Call("POST", "/report", json=self.body)

    @classmethod
    def of(cls, call: Call) -> Record:
        assert call.json is not None
        return cls("end" if call.method == "PATCH" else "report", dict(call.json))


class Spool:
    """The kept records of one job on one server (a file, locked while it changes)."""

    def __init__(self, folder: Path, server: str, job_id: str) -> None:
        digest = hashlib.sha256(f"{server}\n{job_id}".encode()).hexdigest()[:16]
        readable = re.sub(r"[^A-Za-z0-9._-]", "_", job_id)[:64]
        self.path = folder / f"{readable}-{digest}.jsonl"
        self.full_warned = False

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the spool's lock (a file beside it) while its records change."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)  # closing the file releases it
            yield

    def _read(self) -> list[Record]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                data = json.loads(line)
                records.append(Record(str(data["kind"]), dict(data["body"])))
        return records

    def _write(self, records: list[Record]) -> None:
        if not records:
            self.path.unlink(missing_ok=True)
            return
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            for record in records:
                out.write(json.dumps({"kind": record.kind, "body": record.body}) + "\n")
        os.replace(temporary, self.path)

    def exists(self) -> bool:
        return self.path.exists()

    def records(self) -> list[Record]:
        return self._read()

    def add(self, record: Record) -> bool:
        """Keep ``record`` after the others; False (and a warning) when the disk refused.

        An append, unless the spool is full: then the oldest records go.
        """
        line = json.dumps({"kind": record.kind, "body": record.body}) + "\n"
        try:
            with self._locked():
                try:
                    held = self.path.read_bytes().count(b"\n")
                except FileNotFoundError:
                    held = 0
                if held < MAX_RECORDS:
                    with open(self.path, "a", encoding="utf-8") as out:
                        out.write(line)
                    return True
                records = [*self._read(), record]
                dropped = len(records) - MAX_RECORDS
                self._write(records[dropped:])
                if not self.full_warned:
                    self.full_warned = True
                    warn(
                        f"the report spool {self.path} is full ({MAX_RECORDS} records): its "
                        "oldest are dropped to keep the newest",
                        UnavailableWarning,
                    )
        except OSError as exc:
            warn(
                f"a report could not be kept in {self.path} ({exc}); it is lost, training goes on",
                UnavailableWarning,
            )
            return False
        return True

    def begin_replay(self) -> Replay | None:
        """Lock the spool and read it; None when another process replays it or it is unreadable.

        ``end_replay`` writes back what is left and unlocks.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(self.path.with_suffix(".lock"), "a")  # noqa: SIM115 - held until the end
        except OSError as exc:
            warn(f"the report spool {self.path} cannot be opened ({exc})", UnavailableWarning)
            return None
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.close()
                return None  # another process is sending them
        replay = Replay(self._read())
        replay.lock = lock
        return replay

    def end_replay(self, replay: Replay) -> None:
        try:
            self._write(replay.remaining())
        except OSError as exc:
            warn(f"the report spool {self.path} cannot be written ({exc})", UnavailableWarning)
        finally:
            if replay.lock is not None:
                replay.lock.close()  # closing releases the lock
                replay.lock = None


@dataclass
class Replay:
    """Sends kept records in order; stops at the first that gets no answer (kept for later).

    A trial the server ended (a stop answer, or its end) takes no more of its
    records; a trial it no longer holds (404, or a lease-expired answer) loses
    its records, counted in ``dropped``.
    """

    records: list[Record]
    position: int = 0
    blocked: BSOError | None = None
    delivered: int = 0
    dropped: int = 0
    ended: set[TrialKey] = field(default_factory=set)
    gone: set[TrialKey] = field(default_factory=set)
    decisions: dict[TrialKey, Decision] = field(default_factory=dict)
    lock: IO[str] | None = None

    def next_call(self) -> Call | None:
        """The next record to send, or None when all were sent or one found the server away."""
        while self.blocked is None and self.position < len(self.records):
            record = self.records[self.position]
            if record.key not in self.gone and record.key not in self.ended:
                return record.call()
            self.position += 1
        return None

    def _gone(self, key: TrialKey) -> None:
        """The server no longer holds trial ``key``: its unsent records are dropped."""
        self.gone.add(key)
        self.dropped += sum(1 for r in self.records[self.position :] if r.key == key)
        self.position += 1

    def answered(self, body: Any) -> None:
        record = self.records[self.position]
        self.position += 1
        if record.kind == "end":
            self.ended.add(record.key)
            self.delivered += 1
            return
        if not isinstance(body, dict) or not body.get("stop_train"):
            self.delivered += 1
            return
        message = str(body.get("message", ""))
        if "lease expired" in message:  # the server ended it without this result
            self.position -= 1
            self._gone(record.key)
            return
        self.delivered += 1
        self.ended.add(record.key)
        self.decisions[record.key] = Decision(
            stop=True, converged=bool(body.get("converged")), message=message
        )

    def failed(self, exc: BSOError) -> None:
        """No answer, or a refusal: kept for later (401/403, unavailable) or dropped (404...)."""
        from bso_client.rules import KEPT_FOR_LATER

        if isinstance(exc, BSORejectedError) and exc.status_code not in KEPT_FOR_LATER:
            self._gone(self.records[self.position].key)
            return
        self.blocked = exc

    def remaining(self) -> list[Record]:
        """What is still to send: the unsent records of trials the server has not ended."""
        rest = self.records[self.position :]
        return [r for r in rest if r.key not in self.ended and r.key not in self.gone]

    def pending(self, key: TrialKey) -> int:
        """Records of trial ``key`` still to send."""
        return sum(1 for r in self.remaining() if r.key == key)
