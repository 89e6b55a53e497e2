"""What a benchmark prints: latency recorders, percentiles, markdown tables, the machine."""

from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# ----------------------------------------------------------- measurements


@dataclass
class Recorder:
    """Latencies (seconds) per endpoint and status-code counts."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def add(self, endpoint: str, seconds: float, status: int) -> None:
        self.latencies[endpoint].append(seconds)
        self.statuses[(endpoint, status)] += 1

    def merge(self, other: Recorder) -> None:
        for endpoint, values in other.latencies.items():
            self.latencies[endpoint].extend(values)
        self.statuses.update(other.statuses)
        self.errors.update(other.errors)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def non_2xx(self) -> dict[str, int]:
        found: Counter[str] = Counter()
        for (endpoint, status), n in self.statuses.items():
            if not 200 <= status < 300:
                found[f"{status} {endpoint}"] += n
        for error, n in self.errors.items():
            found[f"error {error}"] += n
        return dict(found)


def percentiles_ms(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> list[float]:
    if not values:
        return [float("nan")] * len(qs)
    return [float(v) * 1000 for v in np.percentile(np.asarray(values), qs)]


def latency_rows(recorder: Recorder, order: Sequence[str] = ()) -> list[list[str]]:
    """Rows of endpoint, count, p50, p95, p99 (ms), max (ms)."""
    endpoints = [e for e in order if e in recorder.latencies]
    endpoints += sorted(e for e in recorder.latencies if e not in endpoints)
    rows = []
    for endpoint in endpoints:
        values = recorder.latencies[endpoint]
        p50, p95, p99 = percentiles_ms(values)
        rows.append(
            [
                endpoint,
                str(len(values)),
                f"{p50:.2f}",
                f"{p95:.2f}",
                f"{p99:.2f}",
                f"{max(values) * 1000:.1f}",
            ]
        )
    return rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        return (
            "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)) + " |"
        )

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), separator, *(line(r) for r in rows)])


def machine_summary() -> str:
    """One line: CPU model, cores, memory, Python, PostgreSQL server version."""
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = status_kib_meminfo("MemTotal")
    return (
        f"{model}, {os.cpu_count()} CPUs, {mem_kib / 1024 / 1024:.1f} GiB RAM, "
        f"Python {sys.version.split()[0]}"
    )


def status_kib_meminfo(key: str) -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0
