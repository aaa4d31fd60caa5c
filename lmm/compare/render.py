"""The comparison as Markdown (printed and written), CSV (every number, unrounded, for scripts) and LaTeX (booktabs,
for a paper): three views of the same `Comparison`, so they can never disagree."""

from __future__ import annotations

import csv
import io
import math

from lmm.compare.table import COST_KEYS, Cell, Comparison, footer

COST_HEADERS = {"trainable_params": "trainable", "visual_tokens": "vis. tokens", "train_seconds": "train time",
                "samples_per_sec": "samples/s", "peak_memory_gb": "peak mem (GB)"}


def _digits(kind: str) -> int:
    return 1 if kind == "mme" else 2


def _num(x: float | None, digits: int, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def value_text(cell: Cell, digits: int) -> str:
    if cell.mean is None:
        return "-"
    return _num(cell.mean, digits) + (f" ± {cell.std:.{digits}f}" if cell.std is not None else "")


def delta_text(cell: Cell, digits: int) -> str:
    if cell.delta is None:
        return ""
    text = _num(cell.delta, digits, sign=True)
    if cell.lo is not None and cell.hi is not None:
        text += f" [{_num(cell.lo, digits, True)}, {_num(cell.hi, digits, True)}]" + ("*" if cell.distinguishable
                                                                                       else "")
    return text


def paper_text(cell: Cell, digits: int) -> str:
    if cell.paper is None:
        return "-"
    return _num(cell.paper, 1) + (f" ({cell.paper_delta:+.1f})" if cell.paper_delta is not None else "")


def cost_text(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if key == "trainable_params":
        return f"{value / 1e9:.2f}B" if value >= 1e9 else f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value:,.0f}"
    if key == "visual_tokens":
        return f"{value:.0f}"
    if key == "train_seconds":
        minutes, seconds = divmod(int(round(value)), 60)
        return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"
    return f"{value:.1f}"


def _row_label(c: Comparison, i: int) -> str:
    row = c.rungs[i].row
    return str(row) if row is not None else "arm" if c.rungs[i].is_arm else "-"


def rows(c: Comparison, costs: bool) -> tuple[list[str], list[list[str]]]:
    """Header and body of the human-readable table (Markdown and LaTeX share it)."""
    header = ["#", "rung", "seeds"]
    for b in c.benchmarks:
        header += [c.label(b), f"Δ {c.label(b)}"] + ([f"paper {c.label(b)}"] if c.show_paper else [])
    if costs:
        header += [COST_HEADERS[k] for k in COST_KEYS]
    body = []
    for i, rung in enumerate(c.rungs):
        line = [_row_label(c, i), rung.name, ",".join("?" if s is None else str(s) for s in rung.seeds)]
        for b in c.benchmarks:
            cell, digits = c.cells[(rung.name, b)], _digits(c.kinds[b])
            line += [value_text(cell, digits), delta_text(cell, digits)]
            if c.show_paper:
                line.append(paper_text(cell, digits))
        if costs:
            line += [cost_text(k, c.costs[rung.name][k]) for k in COST_KEYS]
        body.append(line)
    return header, body


def markdown(c: Comparison, costs: bool = False) -> str:
    header, body = rows(c, costs)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join(out) + "\n\n" + "\n".join(f"- {n}" for n in footer(c)) + "\n"


def csv_text(c: Comparison) -> str:
    """One line per rung, every number unrounded (distinguishable: 1/0, empty without an interval)."""
    f = io.StringIO()
    w = csv.writer(f)
    fields = ["mean", "std", "n", "delta", "lo", "hi", "distinguishable", "rung_lo", "rung_hi", "paper"]
    w.writerow(["row", "rung", "reference", "seeds"] + [f"{b}/{k}" for b in c.benchmarks for k in fields]
               + list(COST_KEYS))
    for rung in c.rungs:
        line: list = [rung.row if rung.row is not None else "", rung.name, c.reference.get(rung.name) or "",
                      ";".join("" if s is None else str(s) for s in rung.seeds)]
        for b in c.benchmarks:
            cell = c.cells[(rung.name, b)]
            dist = cell.distinguishable
            line += [cell.mean, cell.std, len(cell.values), cell.delta, cell.lo, cell.hi,
                     "" if dist is None else int(dist), cell.rung_lo, cell.rung_hi, cell.paper]
        line += [c.costs[rung.name][k] for k in COST_KEYS]
        w.writerow(["" if v is None else v for v in line])
    return f.getvalue()


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("→", r"$\to$"), ("≥", r"$\geq$")):
        s = s.replace(a, b)
    return s


def latex(c: Comparison, costs: bool = False) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); * marks a distinguishable change, as in Markdown."""
    header, body = rows(c, costs)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{" + "ll" + "l" * (len(header) - 2)
             + "}", r"\toprule", " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex(v) for v in line) + r" \\" for line in body]
    lines += [r"\bottomrule", r"\end{tabular}",
              r"\caption{" + _tex(" ".join(footer(c)[:2])) + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"
