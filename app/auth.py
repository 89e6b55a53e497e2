"""Credentials on HTTP requests: who calls (BSO_AUTH=required), and may they.

A token comes as ``Authorization: Bearer <token>``, or as HTTP Basic with any
user name and the token as the password (the token as the user name with an
empty password works too). The second is what the unchanged Zeus client
sends for ``server_url="http://trainer:<token>@bso:8000"`` (httpx turns URL
credentials into Basic auth), and what a browser's login prompt sends for
the dashboard.

Routes take :data:`ViewerDep`, :data:`TrainerDep` or :data:`AdminDep` (or
the matching ``dependencies=``); a trainer's job prefixes are checked by the
write use cases, on the job row they read anyway (service.py).
"""

from __future__ import annotations

import binascii
from base64 import b64decode
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security.http import HTTPBase
from starlette.requests import HTTPConnection

from app.errors import ForbiddenError, UnauthorizedError
from app.roles import ANYONE, Principal, Role
from app.schemas import error_example
from app.tokens import TokenVerifier

MISSING = (
    "Authentication required: send `Authorization: Bearer <token>`, or HTTP Basic "
    "with the token as the password."
)
MALFORMED = "Malformed Authorization header: expected `Bearer <token>` or `Basic <base64>`."


class _DocumentedScheme(HTTPBase):
    """Declares an HTTP scheme in the OpenAPI document; reading it is :func:`caller`'s.

    FastAPI lists a dependency that is a ``SecurityBase`` among an operation's
    security requirements; its own parsers would answer malformed headers
    with their own 401s, so this one reads nothing.
    """

    async def __call__(self, request: HTTPConnection) -> None:
        return None


_BEARER = _DocumentedScheme(
    scheme="bearer",
    scheme_name="bearer",
    description="`Authorization: Bearer bso_...`: a token from `bso tokens create`.",
)
_BASIC = _DocumentedScheme(
    scheme="basic",
    scheme_name="basic",
    description="HTTP Basic: any user name, the token as the password "
    '(Zeus: `server_url="http://trainer:<token>@host:8000"`).',
)


def presented_token(authorization: str | None) -> str:
    """The token in an Authorization header; UnauthorizedError without one."""
    if not authorization or not authorization.strip():
        raise UnauthorizedError(MISSING)
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value
    if scheme.lower() == "basic" and value:
        try:
            decoded = b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise UnauthorizedError(MALFORMED) from exc
        user, colon, password = decoded.partition(":")
        if colon and (password or user):
            return password or user
    raise UnauthorizedError(MALFORMED)


async def caller(
    request: Request,
    _bearer: Annotated[None, Depends(_BEARER)],
    _basic: Annotated[None, Depends(_BASIC)],
) -> Principal:
    """Who this request acts for: anyone while BSO_AUTH=off, else its token's holder."""
    if request.app.state.settings.auth == "off":
        return ANYONE
    verifier: TokenVerifier = request.app.state.tokens
    token = presented_token(request.headers.get("authorization"))
    return await verifier.verify(request.app.state.engine, token)


def requires(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller, refused with 403 unless its role includes ``role``."""

    async def dependency(
        request: Request, principal: Annotated[Principal, Depends(caller)]
    ) -> Principal:
        route = request.scope.get("route")
        action = f"{request.method} {getattr(route, 'path', request.url.path)}"
        if (refusal := principal.role_refusal(role, action)) is not None:
            raise ForbiddenError(refusal)
        return principal

    dependency.__name__ = f"requires_{role}"
    return dependency


viewer = requires(Role.VIEWER)
trainer = requires(Role.TRAINER)
admin = requires(Role.ADMIN)
ViewerDep = Annotated[Principal, Depends(viewer)]
TrainerDep = Annotated[Principal, Depends(trainer)]
AdminDep = Annotated[Principal, Depends(admin)]

# OpenAPI answers of guarded operations (BSO_AUTH=required).
UNAUTHENTICATED: dict[int | str, dict[str, Any]] = {
    401: {
        **error_example(MISSING),
        "description": "No credentials, or a wrong or revoked token (BSO_AUTH=required). "
        'Sent with `WWW-Authenticate: Bearer, Basic realm="bso"`.',
        "headers": {
            "WWW-Authenticate": {
                "description": 'The accepted schemes: `Bearer`, `Basic realm="bso"`.',
                "schema": {"type": "string"},
            }
        },
    }
}
NOT_A_TRAINER: dict[int | str, dict[str, Any]] = {
    403: {
        **error_example(
            "Token 'team-a' may act only on jobs with job_id_prefix 'team-a'; "
            "job 'mnist-nightly' has job_id_prefix 'mnist'."
        ),
        "description": "The token is a viewer's, or a trainer's whose prefixes do not "
        "include the job's job_id_prefix.",
    }
}
NOT_AN_ADMIN: dict[int | str, dict[str, Any]] = {
    403: {
        **error_example("Token 'ci' has the trainer role; DELETE /jobs needs admin."),
        "description": "The token is not an admin's.",
    }
}
