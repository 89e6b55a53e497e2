"""Same seed, same batch sizes as the paper's reference code (zeus==0.16.0, zeus._legacy).

The full 24-case comparison, and why one case differs, is bench/parity_zeus_legacy.py.
"""

from __future__ import annotations

import importlib.util
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import pytest
import zeus._legacy.simulate  # noqa: F401  (a dev dependency: fail loudly if it is missing)

from app.sim.results import ReplaySettings
from app.sim.traces import build_case, find_workload

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "parity_zeus_legacy.py"


@pytest.fixture(scope="module")
def parity() -> ModuleType:
    spec = importlib.util.spec_from_file_location("parity_zeus_legacy", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("dataset", "gpu", "seed"),
    [("squad", "p100", 1), ("sentiment140", "v100", 1), ("imagenet", "p100", 2)],
)
def test_the_pure_engine_replays_zeuss_simulator_exactly(
    parity: ModuleType, dataset: str, gpu: str, seed: int
) -> None:
    case, settings = build_case(find_workload(dataset), gpu), ReplaySettings(seed=seed)
    with ThreadPoolExecutor(1) as pool:  # compare() calls asyncio.run: keep it off the tests' loop
        row = pool.submit(parity.compare, case, settings).result()
    assert row.loop_ok, "our trace code does not reproduce Zeus's simulator"
    assert row.aligned_ok, "the legacy optimiser and ours disagree under the same rules"
    assert row.identical, row.first_diff
