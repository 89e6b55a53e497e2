"""The dashboard's Jinja2 environment: autoescaped templates and number formats.

Autoescape is on for every template (job ids are user input), undefined
names fail loudly, and ``job_path`` / ``group_path`` percent-encode a job id
or a group name for a path.
"""

from __future__ import annotations

import math
from datetime import datetime
from functools import cache
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined

from app.dashboard.estimates import outcome

SI_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def joules(value: float | None) -> str:
    """A cost or an energy in J with an SI prefix: 66400 -> '66.4 kJ'."""
    if value is None or not math.isfinite(value):
        return "-"
    for scale, prefix in SI_PREFIXES:
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}J"
    return f"{value:.3g} J"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:+.1f}%"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} s"


def timestamp(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def job_path(job_id: str) -> str:
    """The job page's path below /dashboard, every reserved character encoded.

    A job id may hold '/', '?', '#', '%' or spaces.
    """
    return "jobs/" + quote(job_id, safe="")


def group_path(group: str) -> str:
    """The group page's path below /dashboard, encoded like a job's."""
    return "groups/" + quote(group, safe="")


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("app.dashboard", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(joules=joules, percent=percent, seconds=seconds, timestamp=timestamp)
    env.globals.update(job_path=job_path, group_path=group_path, outcome=outcome)
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)
