"""Server URLs as commands show them: never with the credential a user put in them."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """``url`` with its user name and password replaced by ``***``.

    ``http://trainer:bso_..._secret@host:8000`` is shown as
    ``http://***@host:8000``: titles, JSON output and error messages print
    where they talked, not how they authenticated.
    """
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return urlunsplit(parts._replace(netloc=f"***@{host}{port}"))
