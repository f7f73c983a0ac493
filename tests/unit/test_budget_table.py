"""``docs/security.md``'s budget table names every budget, and every test it names exists."""

from __future__ import annotations

import re
from pathlib import Path

from omiro_trio.budgets import Budget

ROOT = Path(__file__).resolve().parents[2]
TABLE_START = "## Budgets: what one connection can make the server spend"


def budget_table() -> str:
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    start = text.index(TABLE_START)
    return text[start : text.index("\n## ", start + 1)]


def test_every_budget_has_a_row_with_its_counter() -> None:
    table = budget_table()
    for budget in Budget:
        assert f'omiro_budget_exceeded_total{{budget="{budget.value}"}}' in table, budget


def test_every_test_the_table_names_exists() -> None:
    sources = {
        path.name: path.read_text(encoding="utf-8") for path in (ROOT / "tests").rglob("test_*.py")
    }
    rows = [line for line in budget_table().splitlines() if line.startswith("| ")][2:]
    assert len(rows) >= 15
    for row in rows:
        tests = row.rsplit("|", 2)[1]
        named = re.findall(r"`(?:(test_\w+\.py)::)?(test_\w+)(?:\[[^\]]*\])?`", tests)
        assert named, f"a row names no test: {row}"
        module = ""
        for file, name in named:
            module = file or module  # a bare name is in the module named before it
            assert module, f"{name}: in which module?"
            assert f"def {name}(" in sources[module], f"{module}::{name}"
