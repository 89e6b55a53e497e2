"""The report spool on its own: its size bound, a disk that refuses, and the replay's rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from bso_client import BSORejectedError, BSOUnavailableError, UnavailableWarning
from bso_client.spool import MAX_RECORDS, Record, Replay, Spool, spool_dir


def report(trial: int, epoch: int) -> Record:
    body = {"job_id": "j", "batch_size": 32, "trial_number": trial, "time": 1.0,
            "energy": 2.0, "metric": 0.5, "current_epoch": epoch}  # fmt: skip
    return Record("report", body)


def end(trial: int) -> Record:
    return Record("end", {"job_id": "j", "batch_size": 32, "trial_number": trial})


def test_the_spool_keeps_at_most_max_records_dropping_the_oldest(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "http://127.0.0.1:8000", "j")
    with pytest.warns(UnavailableWarning, match=f"full \\({MAX_RECORDS} records\\)") as caught:
        for epoch in range(1, MAX_RECORDS + 6):
            assert spool.add(report(1, epoch))
    assert len(caught) == 1  # said once
    records = spool.records()
    assert len(records) == MAX_RECORDS
    assert records[0].body["current_epoch"] == 6 and records[-1].body["current_epoch"] == 1005


def test_a_disk_that_refuses_loses_the_report_with_a_warning(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    spool = Spool(blocked, "http://127.0.0.1:8000", "j")
    with pytest.warns(UnavailableWarning, match="it is lost, training goes on"):
        assert not spool.add(report(1, 1))


def test_one_file_per_server_and_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = Spool(tmp_path, "http://a:8000", "job/1")
    assert a.path != Spool(tmp_path, "http://b:8000", "job/1").path
    assert a.path != Spool(tmp_path, "http://a:8000", "job/2").path
    assert a.path.parent == tmp_path and "/" not in a.path.name
    monkeypatch.delenv("BSO_SPOOL_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert spool_dir() == tmp_path / "cache" / "bso-client" / "spool"
    monkeypatch.setenv("BSO_SPOOL_DIR", str(tmp_path / "mine"))
    assert spool_dir() == tmp_path / "mine" and spool_dir("given") == Path("given")


def test_replay_sends_in_order_stops_at_the_first_unanswered_and_skips_ended_trials() -> None:
    replay = Replay([report(1, 1), report(1, 2), end(1), report(2, 1), report(2, 2), end(2)])
    sent = []
    call = replay.next_call()
    assert call is not None and call.json is not None
    sent.append(call.json["current_epoch"])
    replay.answered({"stop_train": False, "converged": False, "message": "go on"})
    call = replay.next_call()
    assert call is not None and call.json is not None
    sent.append(call.json["current_epoch"])
    replay.answered({"stop_train": True, "converged": True, "message": "done"})
    # Trial 1 ended on the server: its end is not sent; trial 2's first report is next.
    call = replay.next_call()
    assert call is not None and call.json is not None and call.json["trial_number"] == 2
    replay.failed(BSOUnavailableError("away"))
    assert replay.next_call() is None
    assert sent == [1, 2] and replay.delivered == 2 and replay.dropped == 0
    assert replay.decisions[("j", 1)].converged
    assert replay.remaining() == [report(2, 1), report(2, 2), end(2)]
    assert replay.pending(("j", 2)) == 3 and replay.pending(("j", 1)) == 0


@pytest.mark.parametrize(
    ("answer", "dropped"),
    [
        ({"stop_train": True, "converged": False, "message": "Trial 1's lease expired: ..."}, 3),
        (BSORejectedError(404, "Unknown job", method="POST", path="/report"), 3),
        (BSORejectedError(401, "revoked", method="POST", path="/report"), 0),
    ],
)
def test_replay_drops_a_trial_the_server_no_longer_holds(
    answer: dict[str, object] | BSORejectedError, dropped: int
) -> None:
    replay = Replay([report(1, 1), report(1, 2), end(1), report(2, 1)])
    assert replay.next_call() is not None
    if isinstance(answer, BSORejectedError):
        replay.failed(answer)
    else:
        replay.answered(answer)
    assert replay.dropped == dropped
    if dropped:  # trial 1 is gone, trial 2 goes on
        call = replay.next_call()
        assert call is not None and call.json is not None and call.json["trial_number"] == 2
    else:  # a 401 keeps everything for a valid token
        assert replay.next_call() is None and len(replay.remaining()) == 4
