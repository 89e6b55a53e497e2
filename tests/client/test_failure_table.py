"""client/README.md's failure table: every row names a test here, and every named test exists."""

from __future__ import annotations

import ast
import re

from tests.support.server import REPO_ROOT

CLIENT_TESTS = REPO_ROOT / "tests" / "client"


def table_rows() -> list[str]:
    """The rows of the table under "## Failures" (without its header and rule)."""
    text = (REPO_ROOT / "client" / "README.md").read_text()
    section = text.split("\n## Failures\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return rows[2:]


def functions_in(path: str) -> set[str]:
    tree = ast.parse((CLIENT_TESTS / path).read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def test_every_row_of_the_failure_table_is_a_test() -> None:
    rows = table_rows()
    assert len(rows) >= 15, rows
    for row in rows:
        named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", row)
        assert named, f"a row without its test: {row}"
        for path, name in named:
            assert name in functions_in(path), f"{path}::{name} does not exist (row: {row})"
