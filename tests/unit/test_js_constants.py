"""The page's ``frontend/js/constants.js`` carries exactly the server's codes.

The JS module is parsed as text (no JavaScript engine needed): each frozen
object literal's ``NAME: value`` lines must equal the Python enum's members,
names, values and order alike.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from enum import Enum

import pytest

from omiro_trio.codes import CloseCode, ErrorCode

OBJECT = re.compile(r"export const (\w+) = Object\.freeze\(\{(.*?)\}\);", re.S)
ENTRY = re.compile(r"^\s*([A-Z][A-Z0-9_]*):\s*(\d+|\"[^\"]*\"),\s*$")


def js_objects() -> dict[str, list[tuple[str, int | str]]]:
    source = (importlib.resources.files("omiro_trio") / "frontend/js/constants.js").read_text(
        encoding="utf-8"
    )
    objects: dict[str, list[tuple[str, int | str]]] = {}
    for name, body in OBJECT.findall(source):
        entries: list[tuple[str, int | str]] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            match = ENTRY.match(line)
            assert match, f"constants.js: {name}: cannot read line {line!r}"
            entries.append((match.group(1), json.loads(match.group(2))))
        objects[name] = entries
    return objects


@pytest.mark.parametrize("enum", [CloseCode, ErrorCode])
def test_constants_js_matches_python_enum(enum: type[Enum]) -> None:
    objects = js_objects()
    assert enum.__name__ in objects, f"constants.js does not export {enum.__name__}"
    assert objects[enum.__name__] == [(member.name, member.value) for member in enum]


def test_constants_js_exports_nothing_else() -> None:
    assert set(js_objects()) == {"CloseCode", "ErrorCode"}
