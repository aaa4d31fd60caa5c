"""Comparing runs: the paper-style ablation table of a set of run folders (python -m lmm.compare).

    runs       run folders -> rungs (config ablation.name/row, seed), headline numbers, per-question records, costs
    bootstrap  the paired bootstrap over each benchmark's questions (and seeds), metric recomputed per resample
    table      the numbers of every cell: mean ± std, change, interval, paper, costs (Comparison)
    render     Markdown, CSV, LaTeX;  plot: the PNG;  flips: flipped questions as an HTML page
    paper      the paper's Table 2 as data;  wandb_io: W&B tables and W&B project reading (online only)

Imports flow one way: compare reads lmm.eval's files, lmm.eval never imports compare.
"""
