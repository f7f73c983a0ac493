"""The server package stands alone: it imports nothing of the benchmark lab.

``omiro_bench`` (the load generator behind ``omiro bench``) may import the
server; never the other way round. The installed package is checked, as the
other tests use it. (The serve path itself, imports done while serving
included, is checked by ``tests/integration/test_cli.py``.)
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import omiro_trio

SERVER = Path(omiro_trio.__file__).parent
LAB = "omiro_bench"
CLIENT_LIBRARIES = ("trio_websocket",)  # the tests' and benchmarks' WebSocket client
IMPORT_S = 60.0


def imported_roots(source: str) -> set[str]:
    """The top-level names of every absolute import in ``source``, wherever it stands."""
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_imported_roots_sees_imports_inside_functions() -> None:
    source = "import a.b\ndef f():\n    from c.d import e\n    import f as g\nfrom . import h\n"
    assert imported_roots(source) == {"a", "c", "f"}


def test_server_modules_name_no_lab() -> None:
    modules = sorted(SERVER.rglob("*.py"))
    assert len(modules) > 20  # the installed package, not an empty directory
    naming = {
        str(path.relative_to(SERVER)): sorted(roots & {LAB, *CLIENT_LIBRARIES})
        for path in modules
        if (roots := imported_roots(path.read_text())) & {LAB, *CLIENT_LIBRARIES}
    }
    assert naming == {}


def test_importing_every_server_module_loads_no_lab(tmp_path: Path) -> None:
    """Every module of the server, imported in a fresh interpreter: what came along."""
    program = (
        "import importlib, json, pkgutil, sys, omiro_trio\n"
        "names = [m.name for m in pkgutil.walk_packages(omiro_trio.__path__, 'omiro_trio.')]\n"
        "for name in names:\n"
        "    if not name.endswith('.__main__'):\n"
        "        importlib.import_module(name)\n"
        "print(json.dumps({'imported': names, 'loaded': sorted(sys.modules)}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path,  # not the source tree: the installed package
        capture_output=True,
        text=True,
        timeout=IMPORT_S,
        check=True,
    )
    report = json.loads(result.stdout)
    assert {"omiro_trio.server", "omiro_trio.cli", "omiro_trio.front"} <= set(report["imported"])
    roots = {name.split(".")[0] for name in report["loaded"]}
    assert roots & {LAB, *CLIENT_LIBRARIES} == set()
