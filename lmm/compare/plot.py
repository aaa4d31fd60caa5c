"""The ladder as a figure: one panel per benchmark, rungs on x, each rung's mean with its 95% bootstrap interval
(questions and seeds), a * over changes that are distinguishable from noise, and the paper's numbers on a second
axis (different scale at tiny scale: the shape is what compares)."""

from __future__ import annotations

import math
from pathlib import Path

from lmm.compare.table import Comparison


def plot(c: Comparison, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    n = max(1, len(c.benchmarks))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    names = [r.name for r in c.rungs]
    x = list(range(len(names)))
    for k, bench in enumerate(c.benchmarks):
        ax = axes[k // cols][k % cols]
        cells = [c.cells[(name, bench)] for name in names]
        xs = [i for i, cell in zip(x, cells, strict=True) if cell.mean is not None]
        ys = [cell.mean for cell in cells if cell.mean is not None]
        lo = [cell.mean - cell.rung_lo if cell.rung_lo is not None else (cell.std or 0.0)
              for cell in cells if cell.mean is not None]
        hi = [cell.rung_hi - cell.mean if cell.rung_hi is not None else (cell.std or 0.0)
              for cell in cells if cell.mean is not None]
        ax.errorbar(xs, ys, yerr=[[max(0.0, v) for v in lo], [max(0.0, v) for v in hi]], marker="o", capsize=3,
                    color="tab:blue", label="measured")
        for i, cell in zip(x, cells, strict=True):
            if cell.distinguishable and cell.mean is not None:
                ax.annotate("*", (i, cell.mean), textcoords="offset points", xytext=(0, 6), ha="center",
                            color="tab:red", fontsize=12)
        papers = [(i, cell.paper) for i, cell in zip(x, cells, strict=True) if cell.paper is not None]
        if c.show_paper and papers:
            twin = ax.twinx()
            twin.plot([p[0] for p in papers], [p[1] for p in papers], "s--", color="grey", alpha=0.7, label="paper")
            twin.tick_params(axis="y", labelcolor="grey", labelsize=7)
        ax.set_title(c.label(bench))
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        ax.grid(alpha=0.3)
    for k in range(len(c.benchmarks), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle("mean over seeds, 95% bootstrap interval; * = change from the rung before (an arm: from its base) "
                 "excludes 0", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
