"""Logging setup: plain text (default) or one JSON object per line (BSO_LOG_FORMAT).

Applied twice, never at import time: by ``bso serve`` before uvicorn starts
(handed to uvicorn as its log config, so that uvicorn's own lines, in the
parent process and in every worker, are formatted the same way from the
first one) and in the app's lifespan (``uvicorn app.main:app``, tests).

Each request is logged once, by app/http/observe.py on ``app.access``, when its
answer is sent: uvicorn's access log is switched off in both formats, since
it knows neither the route, the request id nor the duration.

Formatters read the current request (app/telemetry/context.py) when a line is
formatted, which happens in the thread and context that logged it.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from app.telemetry.context import current_request

if TYPE_CHECKING:  # not imported: a starting worker imports this module before it answers pings
    from app.config import LogFormat

# Fields a record may carry as ``extra=``: the request line's.
REQUEST_FIELDS = ("method", "path", "route", "status", "duration_ms", "job_id")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, and more when known."""

    def format(self, record: logging.LogRecord) -> str:
        info = current_request()
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": info.request_id if info else None,
            "pid": record.process or os.getpid(),
        }
        for name in REQUEST_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if info is not None and "job_id" not in line and info.job_id is not None:
            line["job_id"] = info.job_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, then the request's route, job and id when known."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        info = current_request()
        if info is None:
            return text
        route = getattr(record, "route", None)
        job_id = info.job_id
        suffix = "".join(
            (
                f" route={route}" if route is not None else "",
                f" job_id={job_id}" if job_id is not None and route is not None else "",
                f" request_id={info.request_id}",
            )
        )
        head, newline, rest = text.partition("\n")  # after the message, before a traceback
        return head + suffix + newline + rest


def logging_config(level: str, log_format: LogFormat) -> dict[str, Any]:
    """The ``dictConfig`` of the app's loggers, uvicorn's included in json format."""
    silenced = {"handlers": [], "propagate": False}  # uvicorn.access: app.access replaces it
    if log_format == "json":
        # Everything goes through the root logger: uvicorn's, alembic's, warnings too.
        through_root = {"handlers": [], "level": level, "propagate": True}
        return {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"json": {"()": "app.telemetry.log.JsonFormatter"}},
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "formatter": "json",
                    "stream": "ext://sys.stderr",
                }
            },
            "root": {"handlers": ["stderr"], "level": level},
            "loggers": {
                "app": dict(through_root),
                "uvicorn": dict(through_root),
                "uvicorn.error": dict(through_root),
                "uvicorn.access": dict(silenced),
                # One line per plugin whenever a process first reads the schema's revision.
                "alembic.runtime.plugins": {"handlers": [], "level": "WARNING"},
            },
        }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"()": "app.telemetry.log.TextFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "app": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.access": dict(silenced),
        },
    }


def uvicorn_log_config(level: str, log_format: LogFormat) -> dict[str, Any] | None:
    """What ``bso serve`` hands uvicorn: ours in json format, uvicorn's own (None) in text."""
    return logging_config(level, log_format) if log_format == "json" else None


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """Set up the app's logging; in json format, Python's warnings become JSON lines too."""
    logging.config.dictConfig(logging_config(level, log_format))
    logging.captureWarnings(log_format == "json")
