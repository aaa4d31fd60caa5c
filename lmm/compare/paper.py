"""The paper's ablation ladder as data, to show beside the measured one, and the count of its material changes that a
measured ladder reproduces.

Numbers: LLaVA-1.5 [P15] Table 2 ("Scaling results on data, model, and resolution"), as transcribed in
../shared/spec/llava15.md §1.1 (rows 0-9; the InstructBLIP reference row is not a rung). GQA at rows 7-9 is marked
`*` there: GQA training data was seen. Row 0 has no GQA number.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmm.compare.runs import LADDER

if TYPE_CHECKING:
    from lmm.compare.table import Comparison

# row: (GQA, MME perception, MM-Vet)
PAPER_TABLE: dict[int, tuple[float | None, float, float]] = {
    0: (None, 809.6, 25.5),
    1: (47.0, 1197.0, 27.7),
    2: (46.8, 1323.8, 26.3),
    3: (47.3, 1355.2, 27.8),
    4: (50.0, 1377.6, 29.6),
    5: (50.3, 1426.5, 30.8),
    6: (51.4, 1450.0, 30.3),
    7: (62.0, 1469.2, 30.7),
    8: (62.0, 1510.7, 31.1),
    9: (63.3, 1531.3, 36.1),
}
INSTRUCTBLIP_14B = (49.5, 1212.8, 25.6)  # the paper's reference row (not a rung)
COLUMNS = ("gqa", "mme", "mmvet")  # benchmark kinds, in PAPER_TABLE's column order
# issue 11: a paper change is material when |Δ| reaches this (GQA, MM-Vet in points, MME in score)
MATERIAL = {"gqa": 1.0, "mme": 20.0, "mmvet": 1.0}


def value(kind: str, row: int | None, rung: str | None = None) -> float | None:
    """The paper's number for a benchmark kind at a ladder row (or, without a row, the rung's name in LADDER)."""
    if row is None and rung in LADDER:
        row = LADDER.index(rung)
    if kind not in COLUMNS or row not in PAPER_TABLE:
        return None
    return PAPER_TABLE[row][COLUMNS.index(kind)]


def material_changes() -> list[tuple[str, int, float]]:
    """(kind, row, paper Δ) of every material rung-over-rung change of the paper (18 of them)."""
    out = []
    for row in range(1, 10):
        for kind in COLUMNS:
            before, after = value(kind, row - 1), value(kind, row)
            if before is not None and after is not None and abs(after - before) >= MATERIAL[kind]:
                out.append((kind, row, after - before))
    return out


def agreement_lines(c: Comparison) -> list[str]:
    """How many of the paper's material changes the measured table reproduces: the same rung pair measured, the
    interval excluding 0, in the paper's direction."""
    by_row = {r.row if r.row is not None else (LADDER.index(r.name) if r.name in LADDER else None): r.name
              for r in c.rungs}
    reproduced, measured, total = [], 0, 0
    for kind, row, change in material_changes():
        total += 1
        after, before = by_row.get(row), by_row.get(row - 1)
        bench = next((b for b in c.benchmarks if c.kinds[b] == kind), None)
        if after is None or before is None or bench is None or c.reference.get(after) != before:
            continue
        measured += 1
        cell = c.cells[(after, bench)]
        if cell.distinguishable and cell.delta is not None and (cell.delta > 0) == (change > 0):
            reproduced.append(f"{kind} {row - 1}→{row}")
    return [f"paper's material changes (|Δ| ≥ 1 GQA/MM-Vet, ≥ 20 MME): {total}; measured here: {measured}; "
            f"reproduced (interval excludes 0, paper's direction): {len(reproduced)}"
            + (f" ({', '.join(reproduced)})" if reproduced else "")]
