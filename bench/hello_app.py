"""The ceiling: a FastAPI hello-world with one GET and one POST, no database.

Served by ``bench/hotloop.py`` under uvicorn with the same options as
``bso serve``; it answers the hot loop's request mix (GETs here, POSTs and
PATCHes to /echo with the very same JSON bodies) with no work behind it.
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI(title="hello")


class Item(BaseModel):
    """A small body; the hot loop's extra fields are ignored, as in the service."""

    job_id: str
    batch_size: int = 0
    trial_number: int = 0


class Echo(BaseModel):
    job_id: str
    ok: bool


@app.get("/hello")
async def hello(job_id: str = "") -> Echo:
    return Echo(job_id=job_id, ok=True)


@app.api_route("/echo", methods=["POST", "PATCH"])
async def echo(item: Item) -> Echo:
    return Echo(job_id=item.job_id, ok=True)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
