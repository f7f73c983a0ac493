"""From a rule of ``docs/protocol.md`` to its tests, and back.

Every rule of the wire contract carries an anchor (``<a id="session-new"></a>``);
the tests that hold it are marked ``@pytest.mark.rule("protocol/session-new")``
(``pytest --rule protocol/session-new`` runs them). Every anchor must have at
least one test, and every marker must name an anchor that exists, so the two
cannot drift apart silently. The markers are read from the test sources.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = {"protocol": ROOT / "docs" / "protocol.md"}
ANCHOR = re.compile(r'<a id="([a-z0-9-]+)"></a>')


def anchors() -> dict[str, list[str]]:
    """Every rule anchor, as ``doc/anchor``, in each document's order."""
    return {
        doc: [f"{doc}/{name}" for name in ANCHOR.findall(path.read_text(encoding="utf-8"))]
        for doc, path in DOCS.items()
    }


def _is_rule_marker(node: ast.expr) -> bool:
    # pytest.mark.rule(...)
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "rule"
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr == "mark"
    )


def markers() -> dict[str, list[str]]:
    """Each rule a test marker names, with the tests (``file::name``) that name it."""
    found: dict[str, list[str]] = defaultdict(list)
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for decorator in node.decorator_list:
                if not _is_rule_marker(decorator):
                    continue
                assert isinstance(decorator, ast.Call)
                for arg in decorator.args:
                    assert isinstance(arg, ast.Constant), f"{path.name}::{node.name}"
                    found[str(arg.value)].append(f"{path.relative_to(ROOT)}::{node.name}")
    return found


def test_the_protocol_names_its_rules() -> None:
    rules = anchors()["protocol"]
    assert len(rules) >= 60
    assert len(rules) == len(set(rules)), "an anchor is used twice"


def test_every_rule_has_a_test() -> None:
    tested = markers()
    untested = [rule for rules in anchors().values() for rule in rules if not tested.get(rule)]
    assert untested == []


def test_every_marker_names_a_rule() -> None:
    known = {rule for rules in anchors().values() for rule in rules}
    unknown = {rule: tests for rule, tests in markers().items() if rule not in known}
    assert unknown == {}
