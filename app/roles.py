"""Who may do what: the three roles, and the caller a request acts for.

Pure rules that import nothing of the app (app/store/tables.py builds a CHECK
constraint from :class:`Role`): the HTTP layer (auth.py) finds the caller
from its token and demands a role, and the write use cases check a
trainer's job prefixes on the job row they read anyway (service.py). Both
turn a refusal into a 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """Each role may do everything the ones before it may."""

    VIEWER = "viewer"  # every GET: the read API, the dashboard, metrics
    TRAINER = "trainer"  # and register, dispatch, report, end trials (of its prefixes)
    ADMIN = "admin"  # and everything else: DELETE /jobs


_RANK = {Role.VIEWER: 0, Role.TRAINER: 1, Role.ADMIN: 2}


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of a request: a token's name, role and job prefixes.

    ``prefixes`` limits a trainer to jobs whose ``job_id_prefix`` is one of
    them; empty means every prefix. Viewers and admins ignore it.
    """

    name: str
    role: Role
    prefixes: frozenset[str] = frozenset()

    @property
    def limited_to_prefixes(self) -> bool:
        """Whether some job prefixes are refused to this caller."""
        return self.role is not Role.ADMIN and bool(self.prefixes)

    def has(self, role: Role) -> bool:
        """Whether this caller's role includes ``role``."""
        return _RANK[self.role] >= _RANK[role]

    def role_refusal(self, role: Role, action: str) -> str:
        """Why this caller may not do ``action``, which needs ``role``."""
        allowed = " or ".join(r for r in Role if _RANK[r] >= _RANK[role])
        return f"Token {self.name!r} has the {self.role} role; {action} needs {allowed}."

    def prefix_refusal(self, job_id_prefix: str, job_id: str | None) -> str | None:
        """Why this caller may not train a job with this prefix (None: it may)."""
        if self.role is Role.ADMIN or not self.prefixes or job_id_prefix in self.prefixes:
            return None
        job = f"job {job_id!r}" if job_id is not None else "a job"
        return (
            f"Token {self.name!r} may act only on jobs with job_id_prefix "
            f"{', '.join(map(repr, sorted(self.prefixes)))}; {job} has job_id_prefix "
            f"{job_id_prefix!r}."
        )


ANYONE = Principal("anyone", Role.ADMIN)
"""The caller of every request while authentication is off (BSO_AUTH=off)."""
