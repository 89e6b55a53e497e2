"""The examples train for real: every test here needs torch, Lightning and transformers.

They are installed only in the Python 3.11 venv (the CPU build of torch 2.13.0
on disk there), so scripts/test.sh deselects the ``examples`` marker on the
newest Python and runs these tests on 3.11 only.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/examples/" in item.nodeid:
            item.add_marker(pytest.mark.examples)
