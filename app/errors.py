"""The errors the use cases raise: each one a message a client can act on, and its HTTP status.

Rendered as ``{"message": ...}`` by app/http/error_handlers.py, the one place that
turns exceptions into responses; nothing here knows the web framework.
"""

from __future__ import annotations


class DomainError(Exception):
    """An error a client can act on; ``status_code`` says which kind."""

    status_code = 400
    # Response headers of this kind of error; a header may repeat.
    headers: tuple[tuple[str, str], ...] = ()

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class JobNotFoundError(DomainError):
    status_code = 404

    def __init__(self, job_id: str) -> None:
        super().__init__(f"Unknown job {job_id!r}. Register it first with POST /jobs.")


class GroupNotFoundError(DomainError):
    status_code = 404

    def __init__(self, group: str) -> None:
        super().__init__(f"Unknown job group {group!r}: no job was registered in it.")


class TrialNotFoundError(DomainError):
    status_code = 404

    def __init__(self, job_id: str, trial_number: int) -> None:
        super().__init__(
            f"Job {job_id!r} has no trial {trial_number}. Get one from GET /jobs/batch_size."
        )


class JobSpecMismatchError(DomainError):
    """The same job_id was registered before with a different specification."""

    status_code = 409


class GroupMismatchError(DomainError):
    """A job joins a group whose jobs define converged differently."""

    status_code = 409


class BatchSizeMismatchError(DomainError):
    """A report or end names another batch size than the trial was dispatched with."""

    status_code = 409


class UnauthorizedError(DomainError):
    """No credentials, or none that name a live token (BSO_AUTH=required).

    The challenges go in two header lines, which HTTP defines as the same as
    the one line ``Bearer, Basic realm="bso"`` (RFC 9110 5.3); Chromium
    ignores Basic in the one-line form, and shows its login prompt (or sends
    URL credentials) for the dashboard only with a line of its own
    (tests/dashboard/test_browser.py).
    """

    status_code = 401
    headers = (("WWW-Authenticate", "Bearer"), ("WWW-Authenticate", 'Basic realm="bso"'))


class ForbiddenError(DomainError):
    """A valid token whose role or job prefixes do not allow the call."""

    status_code = 403


class TokenNameTakenError(DomainError):
    status_code = 409


class TokenNotFoundError(DomainError):
    status_code = 404

    def __init__(self, name: str) -> None:
        super().__init__(f"No token is named {name!r}; `bso tokens list` shows them.")


class InvalidIdempotencyKeyError(DomainError):
    """An ``Idempotency-Key`` header that is not one key of the documented form."""

    status_code = 400
