"""The file maps match the tree: every .pxi file of the compiled core is included by
_core.pyx, and the "Source layout" map in docs/architecture.md and _core.pyx's docstring
name exactly the files it includes (a maintainer finds each concept from the map)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "src" / "fastproxy"


def _included() -> list[str]:
    return re.findall(r'^include "(core/[^"]+\.pxi)"', (PKG / "_core.pyx").read_text(), re.M)


def _mapped() -> set[str]:
    """The core files the architecture doc's file map names (its first column)."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    block = doc.split("## Source layout", 1)[1].split("```", 2)[1]
    names, folder = set(), None
    for line in block.splitlines():
        if line.startswith("src/"):
            m = re.match(r"src/fastproxy/(core/(?:\w+/)*)\s", line)
            folder = m.group(1) if m else None
        elif folder and re.match(r"  \S", line):
            first_column = re.split(r"\s{2,}", line.strip())[0]
            names.update(folder + n for n in re.findall(r"\w+\.pxi", first_column))
    return names


def test_every_core_file_is_included_once():
    included = _included()
    assert len(included) == len(set(included))
    on_disk = {str(p.relative_to(PKG)) for p in (PKG / "core").rglob("*.pxi")}
    assert on_disk - set(included) == set()
    assert set(included) - on_disk == set()


def test_the_architecture_file_map_names_exactly_the_included_files():
    included = set(_included())
    mapped = _mapped()
    assert included - mapped == set(), "included but not in docs/architecture.md"
    assert mapped - included == set(), "in docs/architecture.md but not included"


def test_the_core_docstring_names_every_included_file():
    doc = (PKG / "_core.pyx").read_text().split('"""', 2)[1]
    assert [f for f in _included() if Path(f).name not in doc] == []
