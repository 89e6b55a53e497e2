"""Which process talks to the server in distributed training: rank 0 only.

The rank is ``torch.distributed``'s when a process group is initialised, else
the ``RANK`` (or ``LOCAL_RANK``) that launchers such as torchrun set, else 0.
torch is never imported here: if the training script has not imported it, no
process group can exist.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TypeVar

T = TypeVar("T")


def _process_group() -> Any:
    """``torch.distributed`` when a process group is initialised, else None."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist


def rank() -> int:
    """The global rank of this process (0 outside distributed training)."""
    dist = _process_group()
    if dist is not None:
        return int(dist.get_rank())
    for name in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def is_leader() -> bool:
    """True on the one process that talks to the server."""
    return rank() == 0


def broadcast(value: T, src: int = 0) -> T:
    """Rank ``src``'s ``value`` on every rank (``broadcast_object_list``); itself without a group.

    Every rank must call it at the same point, like any collective.
    """
    dist = _process_group()
    if dist is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]
