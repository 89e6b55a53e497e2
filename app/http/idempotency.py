r"""The ``Idempotency-Key`` request header (IETF httpapi draft): read and checked here.

A key is 1 to 255 visible ASCII characters other than ``"`` and ``\``, sent
as the draft's Structured Field string (in double quotes) or bare, as most
clients send it; both spell the same key. What a key does is the use case's
(app/service.py: a dispatch's retries find its trial); this module only says
whether the header holds one key, and answers 400 naming the rule otherwise.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import Request

from app.errors import InvalidIdempotencyKeyError

HEADER = "Idempotency-Key"
MAX_LENGTH = 255
_KEY = re.compile(r"[!#-\[\]-~]+")  # visible ASCII but '"' and '\'
FORM = (
    f"1 to {MAX_LENGTH} visible ASCII characters other than '\"' and '\\', bare or in "
    'double quotes, e.g. "8e03978e-40d5-43e8-bc93-6894a57f9324"'
)


def parse_key(value: str) -> str:
    """The key a header value spells; raise ``InvalidIdempotencyKeyError`` naming the rule."""
    value = value.strip(" \t")
    if value.startswith('"') or value.endswith('"'):
        if len(value) < 2 or not (value.startswith('"') and value.endswith('"')):
            raise InvalidIdempotencyKeyError(
                f"{HEADER}: unbalanced double quotes; a key is {FORM}."
            )
        value = value[1:-1]
    if not value:
        raise InvalidIdempotencyKeyError(f"{HEADER}: empty; a key is {FORM}.")
    if len(value) > MAX_LENGTH:
        raise InvalidIdempotencyKeyError(
            f"{HEADER}: {len(value)} characters, more than {MAX_LENGTH}; a key is {FORM}."
        )
    if _KEY.fullmatch(value) is None:
        raise InvalidIdempotencyKeyError(
            f"{HEADER}: holds a space, a control or non-ASCII character, '\"' or '\\'; "
            f"a key is {FORM}."
        )
    return value


_DESCRIPTION = (
    f"Optional. A client's unique key for this request ({FORM}). "
    "GET /jobs/batch_size: a repeat of a dispatch with the same key, while its "
    "trial runs within its lease, answers the same trial and creates none. "
    "POST /report and PATCH /trials: checked, nothing stored (a retry of them "
    "is already safe)."
)


def declared() -> dict[str, Any]:
    """The header as a route's ``openapi_extra`` declares it; :func:`idempotency_key` reads it.

    Not a FastAPI ``Header`` parameter: resolving one costs some 25 us of CPU
    per request (docs/benchmarks.md, issue 24).
    """
    return {
        "parameters": [
            {
                "name": HEADER,
                "in": "header",
                "required": False,
                "schema": {"type": "string", "title": HEADER},
                "description": _DESCRIPTION,
            }
        ]
    }


def idempotency_key(request: Request) -> str | None:
    """The request's key (None: no header); 400 for a malformed or repeated header."""
    values = request.headers.getlist(HEADER)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidIdempotencyKeyError(
            f"{HEADER}: sent {len(values)} times; send one key per request."
        )
    return parse_key(values[0])
