"""FastAPI's native OpenTelemetry: on where OpenTelemetry is set up, off otherwise.

FastAPI (0.165) instruments every request itself once OpenTelemetry has a
provider, and to find out it asks OpenTelemetry for its three global
providers on every request, an ``os.environ`` lookup each, even where none
is ever set up: some 16k instructions, 0.7% of a hot-loop request
(docs/benchmarks.md, issue 24). bso sets none up. So the app asks once,
when it is built: where OpenTelemetry is set up by then
(``opentelemetry-instrument bso serve``, an ``OTEL_PYTHON_*_PROVIDER``
variable) or FastAPI is told to set it up (``FASTAPI_OTEL_AUTO_CONFIGURE=true``),
FastAPI's defaults stand; otherwise its spans, metrics and logs are off.
"""

from __future__ import annotations

import os

from fastapi.telemetry import TelemetryConfig
from opentelemetry import _logs, metrics, trace

# What OpenTelemetry's getters return while nothing is set up (FastAPI's test
# too), and the providers that are set up to do nothing (FastAPI skips them).
_PLACEHOLDERS = frozenset({"ProxyTracerProvider", "_ProxyMeterProvider", "ProxyLoggerProvider"})
_NO_OPS = (trace.NoOpTracerProvider, metrics.NoOpMeterProvider, _logs.NoOpLoggerProvider)
OFF: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def is_set_up() -> bool:
    """Whether OpenTelemetry has, or FastAPI is told to make, a global provider."""
    if os.environ.get("FASTAPI_OTEL_AUTO_CONFIGURE", "").lower() == "true":
        return True
    providers = (
        trace.get_tracer_provider(),
        metrics.get_meter_provider(),
        _logs.get_logger_provider(),
    )
    return any(
        type(provider).__name__ not in _PLACEHOLDERS and not isinstance(provider, _NO_OPS)
        for provider in providers
    )


def fastapi_telemetry() -> TelemetryConfig | None:
    """``FastAPI(telemetry=...)``: its defaults (None) where OpenTelemetry is set up, else off."""
    return None if is_set_up() else OFF
