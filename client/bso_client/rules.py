"""The failure rule (client/README.md's table): what each answer means, and its fix.

Before a run has its batch size, a 4xx is the caller's mistake: it is raised
at once (``BSORejectedError``) with the full URL and the fix written here.
Once a run has its batch size, nothing the server answers raises into
training: the session warns once with the same fix and the client decides.
"""

from __future__ import annotations

from urllib.parse import urlsplit

NOT_A_BSO_SERVER = (
    "BSO_URL (or url=) does not point at a bso server: give the server's base URL, the one "
    "whose /healthz answers, such as http://127.0.0.1:8000 (no path after it)"
)

# Statuses of a running trial's report or end whose reports the spool keeps: the server
# may accept them later (a valid token returns, the operator widens the token's prefixes).
KEPT_FOR_LATER = frozenset({401, 403})

# A 409 at dispatch: pruning found no batch size that reaches the target.
CANNOT_PROCEED = 409


def check_url(url: str) -> str:
    """``url`` if it can name a server; a ``ValueError`` with the fix otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        shown = url if "@" not in url else "***@" + url.rsplit("@", 1)[1]
        host = shown.split("://", 1)[-1].split("/")[0] or "127.0.0.1:8000"
        raise ValueError(
            f"the bso server URL {shown!r} needs an http:// or https:// scheme and a host "
            f"(BSO_URL or url=): write it as http://HOST:PORT, such as http://{host}"
        )
    return url


def fix(status: int, method: str, path: str) -> str:
    """What the caller should do about a ``status`` answer to ``method path``."""
    if status == 401:
        return (
            "give a valid token of role trainer: token= or BSO_TOKEN (an operator makes one "
            "with `bso tokens create NAME --role trainer --prefix PREFIX`)"
        )
    if status == 403:
        return "use a token of role trainer whose prefixes include the job's job_id_prefix"
    if status == 404 and method == "POST" and path == "/jobs":
        return NOT_A_BSO_SERVER  # every bso server takes POST /jobs
    if status == 404:
        return "the server no longer holds this job or trial (deleted, or another database)"
    if status == 409 and path == "/jobs":
        return (
            "a job with this job_id is registered with another spec (or its group disagrees): "
            "give the same spec, or a new job_id"
        )
    if status == 409 and path == "/jobs/batch_size":
        return (
            "no batch size reached the target in pruning: revisit batch_sizes, target_metric "
            "or max_epochs and register a new job"
        )
    if status == 422:
        return "correct the field the message names"
    return "see the server's message"
