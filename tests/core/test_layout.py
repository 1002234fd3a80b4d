"""The source tree keeps the family layout (docs/architecture.md, docs/adding-a-family.md): one
folder per family in csrc/, python/fastgenloss/ and tests/, one bench file and one docs page, the
same family list in CMake and in Python, and no source file over 600 lines."""

from __future__ import annotations

import pathlib
import re

import pytest

from fastgenloss._families import FAMILIES

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCES = ("*.py", "*.h", "*.cpp", "*.cu", "*.cuh")


def test_cmake_and_python_list_the_same_families():
    text = (ROOT / "CMakeLists.txt").read_text()
    m = re.search(r"set\(FGL_FAMILIES ([^)]*)\)", text)
    assert m, "CMakeLists.txt has no set(FGL_FAMILIES ...)"
    assert tuple(m.group(1).split()) == FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_has_its_places(family):
    for path in (f"csrc/{family}/sources.cmake", f"csrc/{family}/ops.cpp",
                 f"python/fastgenloss/{family}/__init__.py",
                 f"python/fastgenloss/{family}/functional.py",
                 f"python/fastgenloss/{family}/nn.py", f"python/fastgenloss/{family}/_ops.py",
                 f"python/fastgenloss/{family}/_cases.py", f"bench/bench_{family}.py",
                 f"docs/{family}.md"):
        assert (ROOT / path).is_file(), f"{family}: {path} is missing"
    assert list((ROOT / "tests" / family).glob(f"test_{family}*.py")), f"tests/{family}/ is empty"


def test_no_source_file_over_600_lines():
    long = []
    for top in ("csrc", "python"):
        for pattern in SOURCES:
            for path in (ROOT / top).rglob(pattern):
                n = len(path.read_text().splitlines())
                if n > 600:
                    long.append(f"{path.relative_to(ROOT)}: {n}")
    assert not long, long
