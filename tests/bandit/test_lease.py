from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.bandit import Lease

T = datetime(2026, 12, 1, tzinfo=UTC)


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("seconds", "renew_every", "sweep_every"),
    [(7200, 60, 60), (600, 30, 60), (100, 5, 25), (2, 0.1, 1)],
)
def test_renewal_and_sweep_intervals_follow_the_lease(
    seconds: float, renew_every: float, sweep_every: float
) -> None:
    lease = Lease(seconds)
    assert lease.renew_every == s(renew_every)
    assert lease.sweep_every_s == sweep_every


def test_a_lease_expires_strictly_after_its_length() -> None:
    lease = Lease(3600)
    assert lease.expires_at(T) == T + s(3600)
    assert not lease.is_expired(T, T + s(3600))
    assert lease.is_expired(T, T + s(3600.001))


def test_a_renewal_is_due_once_the_stored_one_is_renew_every_old() -> None:
    lease = Lease(7200)
    assert not lease.renewal_due(T, T + s(59.999))
    assert lease.renewal_due(T, T + s(60))


def test_the_guarantee_holds_for_the_worst_report_schedule() -> None:
    # Reports no more than lease - renew_every apart never let the lease run out,
    # even when each renewal is skipped for being just under renew_every.
    lease = Lease(1000)
    gap = lease.seconds - lease.renew_every.total_seconds()
    stored = last = T
    for step in range(100):
        last += lease.renew_every - s(0.001) if step % 2 else s(gap)
        assert not lease.is_expired(stored, last), step
        if lease.renewal_due(stored, last):
            stored = last


def test_a_zero_lease_is_off() -> None:
    off = Lease(0)
    assert not off.enabled
    assert off.expires_at(T) is None and off.expired_before(T) is None
    assert not off.is_expired(T - s(10**9), T) and not off.renewal_due(T - s(10**9), T)
