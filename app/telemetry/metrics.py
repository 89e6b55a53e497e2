"""Prometheus metrics, counted in every worker process, and their /metrics text.

Multiprocess mode: ``bso serve`` points PROMETHEUS_MULTIPROC_DIR at a fresh
directory before any worker starts; each worker then writes its counts to its
own files there, and /metrics, whichever worker answers it, sums them all.
prometheus-client chooses its mode once, when ``prometheus_client.values`` is
first imported, so the variable must be set before this module is imported
(app/cli/main.py imports nothing that imports it). Without the variable (tests, a
plain ``uvicorn app.main:app`` with one worker) the counts live in this
process and /metrics shows them.

Counters and histograms only, no gauges: the files of a worker that died stay
and keep being summed, which is right for counts, so no worker has to be
marked dead. No label holds a job id or a raw path: label values must stay
few (a route is its template, e.g. "/jobs/{job_id}").
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from app.bandit.types import StopReason, TrialStatus, TrialType

CONTENT_TYPE = CONTENT_TYPE_LATEST
ALREADY_ENDED = "already_ended"  # a report on a trial that had ended: answered, nothing changed
DATABASE_ERROR_KINDS = ("busy", "unavailable")
# Request latencies are milliseconds; the top buckets catch lock waits (BSO_LOCK_TIMEOUT_MS).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Ours alone, so that the process-wide default registry of a host program is left as it is.
REGISTRY = CollectorRegistry()

HTTP_REQUESTS = Counter(
    "bso_http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "bso_http_request_duration_seconds",
    "Time from receiving a request to sending the last byte of its answer.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TRIALS_DISPATCHED = Counter(
    "bso_trials_dispatched",
    "Trials dispatched by GET /jobs/batch_size, by trial type.",
    ["type"],
    registry=REGISTRY,
)
TRIALS_ENDED = Counter(
    "bso_trials_ended",
    "Trials that ended: Succeeded by a final report, Failed by PATCH /trials or expiry.",
    ["status"],
    registry=REGISTRY,
)
REPORTS = Counter(
    "bso_reports",
    "Epoch reports answered by POST /report, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
LEASES_EXPIRED = Counter(
    "bso_leases_expired",
    "Dispatched trials marked Failed because their lease ran out (no report in time).",
    registry=REGISTRY,
)
DATABASE_ERRORS = Counter(
    "bso_database_errors",
    "Requests answered 503 because the database was unreachable or a job's lock stayed busy.",
    ["kind"],
    registry=REGISTRY,
)

# Every known label value starts at 0, so rates and sums work before the first
# event. The children are kept: labels() costs more than the count (1-2 us).
_DISPATCHED = {t.value: TRIALS_DISPATCHED.labels(t.value) for t in TrialType}
_ENDED = {
    s.value: TRIALS_ENDED.labels(s.value) for s in (TrialStatus.SUCCEEDED, TrialStatus.FAILED)
}
_REPORTS = {o: REPORTS.labels(o) for o in [*(r.value for r in StopReason), ALREADY_ENDED]}
for _kind in DATABASE_ERROR_KINDS:
    DATABASE_ERRORS.labels(_kind)

_FINAL = frozenset(r.value for r in StopReason if r is not StopReason.KEEP_TRAINING)
# (method, route, status) -> its counter and histogram children: labels() costs more.
_http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


# --------------------------------------------- hooks, one line at each call site


def trial_dispatched(trial_type: str) -> None:
    _DISPATCHED[str(trial_type)].inc()


def trial_ended(status: str) -> None:
    _ENDED[str(status)].inc()


def report_answered(outcome: str) -> None:
    """Count a report; a final one (converged, stopped early, max epochs) ends its trial."""
    outcome = str(outcome)  # a StopReason is a str: its value
    _REPORTS[outcome].inc()
    if outcome in _FINAL:
        _ENDED[TrialStatus.SUCCEEDED.value].inc()


def leases_expired(count: int = 1) -> None:
    """Trials whose lease ran out; they end Failed (service.py, after the expiry committed)."""
    if count > 0:
        LEASES_EXPIRED.inc(count)
        _ENDED[TrialStatus.FAILED.value].inc(count)


def database_error(kind: str) -> None:
    """A request answered 503: ``busy`` (lock timeout) or ``unavailable``."""
    DATABASE_ERRORS.labels(kind).inc()


def request_observed(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered request (method, route and status are bounded by the caller)."""
    key = (method, route, status)
    children = _http_children.get(key)
    if children is None:
        labels = (method, route, str(status))
        children = (HTTP_REQUESTS.labels(*labels), HTTP_DURATION.labels(*labels))
        _http_children[key] = children
    children[0].inc()
    children[1].observe(seconds)


# ------------------------------------------------------------------ exposition


def multiprocess_mode() -> bool:
    """Whether prometheus-client writes to PROMETHEUS_MULTIPROC_DIR (decided at its import)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


@lru_cache(maxsize=1)
def _all_workers() -> CollectorRegistry:
    registry = CollectorRegistry()
    # Reads every worker's files again on each scrape.
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def exposition() -> bytes:
    """The Prometheus text format of every worker's counts (this process's alone otherwise)."""
    return generate_latest(_all_workers() if multiprocess_mode() else REGISTRY)
