"""Logging setup, done once when the app starts (never at import time)."""

from __future__ import annotations

import logging.config


def configure_logging(level: str) -> None:
    """Plain key=value-friendly lines on stderr; uvicorn's loggers keep theirs."""
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
            },
            "handlers": {
                "stderr": {"class": "logging.StreamHandler", "formatter": "plain"},
            },
            "loggers": {
                "app": {"handlers": ["stderr"], "level": level, "propagate": False},
            },
        }
    )
