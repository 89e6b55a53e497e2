"""What the client raises, and the warnings it gives once.

Training code catches ``BSOError`` (or one of its two kinds): the server
refused a call before a run had its batch size (``BSORejectedError``, a 4xx
with the server's message, the full URL and the fix), or no answer came
(``BSOUnavailableError``, raised only with ``on_unavailable="raise"``;
otherwise the client falls back and warns). client/README.md's failure table
says which answer does what.
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

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        method: str,
        path: str,
        url: str | None = None,
        fix: str | None = None,
    ) -> None:
        where = path if url is None else url
        text = f"{method} {where}: {status_code} {message}"
        if fix:
            text = f"{text} Fix: {fix}"
        super().__init__(text)
        self.status_code = status_code
        self.message = message
        self.method = method
        self.path = path
        self.url = url  # the full URL of the call, credentials redacted
        self.fix = fix


class BSOUnavailableError(BSOError):
    """No usable answer: the server is down, too slow, or answered 5xx after the retries."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class BSOWarning(UserWarning):
    """Base of the client's warnings, so one filter silences them all."""


class UnavailableWarning(BSOWarning):
    """The server could not be reached: training goes on with the default batch size."""


class RejectedWarning(BSOWarning):
    """The server refused a call of a running trial (4xx): training goes on, the client decides."""


class EnergyWarning(BSOWarning):
    """The cost is ``max_power x time`` with a ``max_power`` the caller did not give."""


_WARNED_IN_PROCESS: set[str] = set()


def warn_once_per_process(key: str, message: str, category: type[BSOWarning]) -> None:
    """``warn`` the first time ``key`` comes up in this process, never again."""
    if key in _WARNED_IN_PROCESS:
        return
    _WARNED_IN_PROCESS.add(key)
    warn(message, category)


def warn(message: str, category: type[BSOWarning]) -> None:
    """``warnings.warn`` attributed to the first caller outside this package."""
    package = os.path.dirname(__file__)
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
