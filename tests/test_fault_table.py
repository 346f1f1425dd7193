"""docs/faults.md: every test the fault table names exists, and every row names one (a promise in the docs is a
test)."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "faults.md"


def table_rows() -> list[str]:
    lines = TABLE.read_text(encoding="utf-8").splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| Fault |")]
    assert len(rows) >= 10, "the fault table lost its rows"
    return rows


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_row_names_a_test_and_every_named_test_exists():
    for row in table_rows():
        named = re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", row.rsplit("|", 2)[-2])
        assert named, f"a fault without a test: {row[:80]}"
        for file, name in named:
            assert name in defined_tests(ROOT / file), f"{file}::{name} is named in docs/faults.md but missing"
