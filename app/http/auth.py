"""Credentials on HTTP requests: who calls (BSO_AUTH=required), and may they.

A token comes as ``Authorization: Bearer <token>``, or as HTTP Basic with any
user name and the token as the password (the token as the user name with an
empty password works too). The second is what the unchanged Zeus client
sends for ``server_url="http://trainer:<token>@bso:8000"`` (httpx turns URL
credentials into Basic auth), and what a browser's login prompt sends for
the dashboard.

The Zeus routes take the trainer's caller through their one dependency
(routes.py's ``TrainerCall``: the caller goes on to the use case), others
``dependencies=[Depends(viewer)]`` / ``[Depends(admin)]``; a trainer's job
prefixes are checked by the write use cases, on the job row they read
anyway (service.py). Each guard is one plain dependency: FastAPI's security
classes, as sub-dependencies, cost about 45 us more per request, so
:func:`install_openapi_security` declares the schemes in the OpenAPI
document instead.
"""

from __future__ import annotations

import binascii
from base64 import b64decode
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request

from app.errors import ForbiddenError, UnauthorizedError
from app.roles import ANYONE, Principal, Role
from app.schemas import error_example
from app.tokens import TokenVerifier

MISSING = (
    "Authentication required: send `Authorization: Bearer <token>`, or HTTP Basic "
    "with the token as the password."
)
MALFORMED = "Malformed Authorization header: expected `Bearer <token>` or `Basic <base64>`."

SCHEMES: dict[str, dict[str, Any]] = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer bso_...`: a token from `bso tokens create`.",
    },
    "basic": {
        "type": "http",
        "scheme": "basic",
        "description": "HTTP Basic: any user name, the token as the password "
        '(Zeus: `server_url="http://trainer:<token>@host:8000"`).',
    },
}


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


def requires(role: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: the caller, 401 without a live token, 403 unless its role includes ``role``.

    Anyone may do anything while BSO_AUTH=off.
    """

    async def dependency(request: Request) -> Principal:
        state = request.app.state
        if state.settings.auth == "off":
            return ANYONE
        verifier: TokenVerifier = state.tokens
        token = presented_token(request.headers.get("authorization"))
        principal = await verifier.verify(state.engine, token)
        if not principal.has(role):
            route = getattr(request.scope.get("route"), "path", request.url.path)
            raise ForbiddenError(principal.role_refusal(role, f"{request.method} {route}"))
        return principal

    dependency.__name__ = f"requires_{role}"
    return dependency


def install_openapi_security(app: FastAPI) -> None:
    """Declare both schemes, and require one on every operation that can answer 401."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()  # built once, then cached by FastAPI
        components = schema.setdefault("components", {})
        if "securitySchemes" not in components:
            components["securitySchemes"] = SCHEMES
            for item in schema["paths"].values():
                for operation in item.values():
                    if "401" in operation.get("responses", {}):
                        operation["security"] = [{"bearer": []}, {"basic": []}]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented hook


viewer = requires(Role.VIEWER)
trainer = requires(Role.TRAINER)
admin = requires(Role.ADMIN)

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
