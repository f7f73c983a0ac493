"""The vendored ALTCHA solver is the pinned release, unchanged (frontend/vendor/README.md)."""

from __future__ import annotations

import hashlib
import re

from omiro_trio.static import frontend_dir

VERSION = "3.2.2"
FOLDER = frontend_dir() / "vendor" / f"altcha-{VERSION}"
ROW = re.compile(r"^\| `([^`]+)` \| [^|]+ \| `([0-9a-f]{64})` \|$", re.MULTILINE)


def recorded() -> dict[str, str]:
    """File -> SHA-256, from the README's ``altcha-<version>/`` section."""
    readme = (frontend_dir() / "vendor" / "README.md").read_text(encoding="utf-8")
    section = readme.split(f"## `altcha-{VERSION}/`", 1)[1].split("\n## ", 1)[0]
    assert f"npm pack altcha@{VERSION}" in section
    return dict(ROW.findall(section))


def test_vendored_altcha_files_match_the_recorded_digests() -> None:
    digests = recorded()
    assert set(digests) == {"altcha-lib.min.js", "workers/sha.js"}
    for name, digest in digests.items():
        assert hashlib.sha256((FOLDER / name).read_bytes()).hexdigest() == digest, name


def test_vendored_altcha_is_the_folders_version_with_its_licence() -> None:
    assert sorted(p.name for p in frontend_dir().glob("vendor/altcha-*")) == [f"altcha-{VERSION}"]
    assert "MIT License" in (FOLDER / "LICENSE").read_text(encoding="utf-8")
    library = (FOLDER / "altcha-lib.min.js").read_text(encoding="utf-8")
    assert "solveChallengeWorkers" in library  # what js/pow.js imports
    pow_js = (frontend_dir() / "js" / "pow.js").read_text(encoding="utf-8")
    assert f'"../vendor/altcha-{VERSION}/"' in pow_js
