"""What the client raises, and the warnings it gives once.

Training code catches ``BSOError`` (or one of its two kinds): the server
refused a call (``BSORejectedError``, a 4xx with the server's message), or no
answer came (``BSOUnavailableError``, raised only with
``on_unavailable="raise"``; otherwise the client falls back and warns).
"""

from __future__ import annotations

import os
import sys
import warnings


class BSOError(Exception):
    """Anything the batch size optimizer client raises."""


class BSORejectedError(BSOError):
    """The server answered 4xx: the request is wrong, retrying will not help.

    ``message`` is the server's own (for 422, the invalid fields).
    """

    def __init__(self, status_code: int, message: str, *, method: str, path: str) -> None:
        super().__init__(f"{method} {path}: {status_code} {message}")
        self.status_code = status_code
        self.message = message
        self.method = method
        self.path = path


class BSOUnavailableError(BSOError):
    """No usable answer: the server is down, too slow, or answered 5xx after the retries."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class BSOWarning(UserWarning):
    """Base of the client's warnings, so one filter silences them all."""


class UnavailableWarning(BSOWarning):
    """The server could not be reached: training goes on with the default batch size."""


class EnergyWarning(BSOWarning):
    """Energy is not measured the way one might assume (no GPU, no counter)."""


def warn(message: str, category: type[BSOWarning]) -> None:
    """``warnings.warn`` attributed to the first caller outside this package."""
    package = os.path.dirname(__file__)
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
