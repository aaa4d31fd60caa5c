"""The comparison itself: per rung and benchmark the mean ± std over seeds, the change from the reference rung with
its paired-bootstrap interval, whether that change is distinguishable from noise, the paper's number, and costs.

Why a separate step from rendering: Markdown, CSV, LaTeX, the plot and W&B all show the same numbers; they are
computed once here, as plain data (`Comparison`), and every renderer only formats them.
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass, field

import numpy as np

from lmm.compare import paper
from lmm.compare.bootstrap import (
    DEFAULT_RESAMPLES,
    LEVEL,
    bootstrap_rungs,
    interval,
    point_value,
    statistic_for,
    unit_table,
)
from lmm.compare.runs import LADDER, Rung

# display names of benchmark kinds (scores.json "kind"); the ladder's three probes come first
DISPLAY = {"gqa": "GQA", "mme": "MME", "mmvet": "MM-Vet", "vqav2": "VQAv2", "vizwiz": "VizWiz", "scienceqa": "SQA-IMG",
           "textvqa": "TextVQA", "pope": "POPE", "mmbench": "MMBench", "seed": "SEED", "llava_bench": "LLaVA-W",
           "refcoco": "RefCOCO"}
COST_KEYS = ("trainable_params", "visual_tokens", "train_seconds", "samples_per_sec", "peak_memory_gb")
TOLERANCE = 1e-6  # relative: the metric recomputed from per_question.jsonl vs the recorded headline


@dataclass
class Cell:
    """One rung x benchmark: mean ± sample std (ddof=1) over seeds, and the change from the reference rung."""

    values: list[float]
    mean: float | None = None
    std: float | None = None  # None with one seed
    delta: float | None = None
    lo: float | None = None  # 95% paired-bootstrap interval of delta
    hi: float | None = None
    rung_lo: float | None = None  # 95% bootstrap interval of the rung's own value (the plot's error bars)
    rung_hi: float | None = None
    paper: float | None = None
    paper_delta: float | None = None

    @property
    def distinguishable(self) -> bool | None:
        """True when the interval of the change excludes 0; None without an interval."""
        if self.lo is None or self.hi is None:
            return None
        return self.lo > 0 or self.hi < 0


@dataclass
class Comparison:
    rungs: list[Rung]
    benchmarks: list[str]  # benchmark names (run folder eval/<name>), column order
    kinds: dict[str, str]
    cells: dict[tuple[str, str], Cell]  # (rung name, benchmark name)
    reference: dict[str, str | None]  # rung -> the rung its change is measured from
    costs: dict[str, dict[str, float | None]]
    resamples: int
    seed: int
    show_paper: bool = False
    notes: list[str] = field(default_factory=list)

    def label(self, bench: str) -> str:
        """A column's name: the kind's display name, or the benchmark's own name when two share a kind."""
        kind = self.kinds[bench]
        same = [b for b in self.benchmarks if self.kinds[b] == kind]
        return DISPLAY.get(kind, bench) if len(same) == 1 else bench


def reference_rungs(rungs: list[Rung]) -> dict[str, str | None]:
    """The rung each change is measured from: the row above for ladder rungs (and for runs named by id alone), the
    config's `ablation.base` for an arm (no change shown without one)."""
    names = [r.name for r in rungs]
    out: dict[str, str | None] = {}
    for i, rung in enumerate(rungs):
        if rung.is_arm:
            out[rung.name] = rung.base if rung.base in names else None
        else:
            prev = rungs[i - 1] if i else None
            out[rung.name] = prev.name if prev is not None and not prev.is_arm else None
    return out


def choose_benchmarks(rungs: list[Rung], wanted: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """Benchmark columns: the wanted names (or kinds) in that order, else every benchmark seen, probes first."""
    kinds: dict[str, str] = {}
    for rung in rungs:
        for run in rung.runs:
            for name, b in run.benchmarks.items():
                kinds.setdefault(name, b.kind)
    if wanted:
        chosen = [n for w in wanted for n in kinds if n == w or kinds[n] == w or DISPLAY.get(kinds[n]) == w]
        missing = [w for w in wanted if not any(n == w or kinds[n] == w or DISPLAY.get(kinds[n]) == w for n in kinds)]
        if missing:
            warnings.warn(f"benchmarks not found in any run: {missing}", stacklevel=2)
        chosen = list(dict.fromkeys(chosen))
    else:
        order = ["gqa", "mme", "mmvet"]
        chosen = sorted(kinds, key=lambda n: (order.index(kinds[n]) if kinds[n] in order else len(order),
                                              list(kinds).index(n)))
    return chosen, {n: kinds[n] for n in chosen}


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return float(np.mean(values)), (statistics.stdev(values) if len(values) > 1 else None)  # ddof=1


def _rung_tables(rung: Rung, bench: str, stat, notes: list[str]) -> list:
    tables = []
    for run in rung.runs:
        result = run.benchmarks.get(bench)
        records = result.records() if result is not None else None
        if not records:
            tables.append(None)
            continue
        design, table = unit_table(stat, records)
        recomputed = point_value(stat, design, table)
        if result.headline is not None and abs(recomputed - result.headline) > TOLERANCE * max(1.0, abs(
                result.headline)):
            notes.append(f"{run.run_id} {bench}: per-question records give {recomputed:.4f}, scores.json "
                         f"{result.headline:.4f} (intervals still from the records)")
        tables.append((design, table))
    return tables


def compare(rungs: list[Rung], benchmarks: list[str] | None = None, resamples: int = DEFAULT_RESAMPLES,
            seed: int = 0, show_paper: bool | None = None) -> Comparison:
    """Every cell of the table. `show_paper` None: on when any run used the paper preset."""
    names, kinds = choose_benchmarks(rungs, benchmarks)
    if show_paper is None:
        show_paper = any(run.preset == "paper" for rung in rungs for run in rung.runs)
    reference = reference_rungs(rungs)
    cells: dict[tuple[str, str], Cell] = {}
    notes: list[str] = []
    index = {r.name: i for i, r in enumerate(rungs)}
    for bench in names:
        for rung in rungs:
            values = [run.benchmarks[bench].headline for run in rung.runs if bench in run.benchmarks and
                      run.benchmarks[bench].headline is not None]
            mean, std = _mean_std([float(v) for v in values])
            cells[(rung.name, bench)] = Cell(values=[float(v) for v in values], mean=mean, std=std,
                                             paper=paper.value(kinds[bench], rung.row, rung.name))
        stat = statistic_for(kinds[bench])
        boots: list = [None] * len(rungs)
        if stat is None:
            notes.append(f"{bench}: no per-question form of its metric, no intervals")
        else:
            tables = [_rung_tables(rung, bench, stat, notes) for rung in rungs]
            boots, note = bootstrap_rungs(stat, tables, resamples, seed)
            if note:
                notes.append(f"{bench}: {note}")
        for rung in rungs:
            cell = cells[(rung.name, bench)]
            boot = boots[index[rung.name]]
            if boot is not None:
                cell.rung_lo, cell.rung_hi = interval(boot)
            ref = reference[rung.name]
            if ref is None:
                continue
            before = cells[(ref, bench)]
            if cell.mean is not None and before.mean is not None:
                cell.delta = cell.mean - before.mean
                ref_boot = boots[index[ref]]
                if boot is not None and ref_boot is not None:
                    cell.lo, cell.hi = interval(boot - ref_boot)
            if cell.paper is not None and before.paper is not None:
                cell.paper_delta = cell.paper - before.paper
    costs = {rung.name: {k: _mean_std([float(r.costs[k]) for r in rung.runs if r.costs.get(k) is not None])[0]
                         for k in COST_KEYS} for rung in rungs}
    unknown = [r.name for r in rungs if r.row is None and not r.is_arm and r.name not in LADDER]
    if unknown:
        notes.append(f"runs without an ablation rung in their config, named by run id: {', '.join(unknown)}")
    return Comparison(rungs=rungs, benchmarks=names, kinds=kinds, cells=cells, reference=reference, costs=costs,
                      resamples=resamples, seed=seed, show_paper=show_paper, notes=list(dict.fromkeys(notes)))


def footer(c: Comparison) -> list[str]:
    """The table's notes: what ± and the intervals mean, and anything that was left out."""
    seeds = sorted({len(r.runs) for r in c.rungs})
    lines = [f"mean ± std over seeds (sample std, ddof=1; seeds per rung: {', '.join(map(str, seeds))}; no std with "
             "one seed). Δ = change from the rung above (an arm: from its ablation.base).",
             f"[lo, hi] = {LEVEL:.0%} paired bootstrap interval of Δ: {c.resamples} resamples of the benchmark's "
             f"questions (the same for both rungs; MME: images within subtasks, POPE: within splits, MMBench: base "
             f"questions) and of each rung's seeds, bootstrap seed {c.seed}; * = the interval excludes 0."]
    if c.show_paper:
        lines.append("paper = LLaVA-1.5 Table 2 (spec llava15.md §1.1); GQA rows 7-9 saw GQA training data.")
        lines += paper.agreement_lines(c)
    return lines + c.notes
