"""Trial leases: when a Dispatched trial counts as abandoned (pure: time is passed in).

A trial holds a lease from its dispatch, renewed by its reports. A trial whose
last renewal is more than ``seconds`` old is expired: its training process is
taken to be dead (killed without ending the trial), so it is marked Failed and,
if it was an exploration, its batch size is explored again.

Renewing on every report would make every report a write. A report renews only
when the stored renewal is at least :attr:`Lease.renew_every` old, so the stored
time lags the last report by less than that. Hence the guarantee: a trial whose
dispatch and reports are never more than ``seconds - renew_every`` apart (at
least 95% of the lease) never expires.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

MAX_RENEW_EVERY_S = 60.0
MAX_SWEEP_EVERY_S = 60.0
MIN_SWEEP_EVERY_S = 1.0


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease length in seconds; 0 disables leases (trials never expire)."""

    seconds: float

    @property
    def enabled(self) -> bool:
        return self.seconds > 0

    @property
    def renew_every(self) -> timedelta:
        """How stale the stored renewal may get before a report renews it."""
        return timedelta(seconds=min(self.seconds / 20, MAX_RENEW_EVERY_S))

    @property
    def sweep_every_s(self) -> float:
        """How often each server process looks for expired trials."""
        return max(MIN_SWEEP_EVERY_S, min(MAX_SWEEP_EVERY_S, self.seconds / 4))

    def expires_at(self, renewed_at: datetime) -> datetime | None:
        """When a trial renewed at ``renewed_at`` expires; None without leases."""
        return renewed_at + timedelta(seconds=self.seconds) if self.enabled else None

    def expired_before(self, now: datetime) -> datetime | None:
        """Trials last renewed before this instant are expired at ``now``."""
        return now - timedelta(seconds=self.seconds) if self.enabled else None

    def is_expired(self, renewed_at: datetime, now: datetime) -> bool:
        cutoff = self.expired_before(now)
        return cutoff is not None and renewed_at < cutoff

    def renewal_due_before(self, now: datetime) -> datetime | None:
        """A report at ``now`` renews a lease last renewed at or before this instant."""
        return now - self.renew_every if self.enabled else None

    def renewal_due(self, renewed_at: datetime, now: datetime) -> bool:
        """Whether a report at ``now`` should store a new renewal time."""
        before = self.renewal_due_before(now)
        return before is not None and renewed_at <= before
