"""Lower layers know nothing of upper ones: what the transport modules may import.

The HTTP layer (``omiro_trio/http/``) serves bytes; the WebSocket engine
(``wsengine.py``) frames; the front door (``front.py``) accepts. None of
them may import the application (hub, sessions, backends, the server
context, the WebSocket session's handler): what they need of it is passed
in. Read from the source, so a new import shows here before it shows as a
twelve-floor house.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

PACKAGE = Path(importlib.util.find_spec("omiro_trio").origin).parent  # type: ignore[arg-type, union-attr]

ALLOWED = {
    "http": {"omiro_trio.http", "omiro_trio.budgets", "omiro_trio.addresses"},
    "wsengine.py": {"omiro_trio.budgets", "omiro_trio.http.dates", "omiro_trio.http.heads"},
    "front.py": {"omiro_trio.addresses", "omiro_trio.metrics"},
}


def _modules(name: str) -> list[Path]:
    path = PACKAGE / name
    return sorted(path.glob("*.py")) if path.is_dir() else [path]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("omiro_trio")}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_transport_layer_imports_nothing_of_the_application(layer: str) -> None:
    allowed = ALLOWED[layer]
    for path in _modules(layer):
        for name in _imports(path):
            assert any(name == a or name.startswith(a + ".") for a in allowed), (
                f"{path.relative_to(PACKAGE)} imports {name}"
            )


def test_the_layers_named_here_exist() -> None:
    for layer in ALLOWED:
        assert _modules(layer), layer
        assert all(path.exists() for path in _modules(layer))
