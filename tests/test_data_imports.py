"""Imports flow one way: lmm/data is the bottom room (it may use lmm.config, lmm.constants and lmm.log), lmm/world
builds on data and model, and neither reaches up into training, evaluation or the pipeline."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LMM = Path(__file__).resolve().parents[1] / "lmm"
ALLOWED = {"data": ("lmm.data", "lmm.config", "lmm.constants", "lmm.log"),
           "world": ("lmm.world", "lmm.data", "lmm.model", "lmm.config", "lmm.constants", "lmm.log")}


def lmm_imports(path: Path) -> set[str]:
    """The lmm modules a file imports, at the top or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m == "lmm" or m.startswith("lmm.")}


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_a_room_imports_only_rooms_below_it(room):
    files = sorted((LMM / room).rglob("*.py"))
    assert files
    wrong = {f"{f.relative_to(LMM.parent)}: {m}" for f in files for m in lmm_imports(f)
             if not m.startswith(ALLOWED[room])}
    assert not wrong, sorted(wrong)
