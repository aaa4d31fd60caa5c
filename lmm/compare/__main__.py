"""python -m lmm.compare <run folders or globs> [options]: the paper-style ablation table of a set of runs.

    python -m lmm.compare outputs/runs/ladder-* --seed 0 --resamples 2000 --costs --paper --out experiments/ladder

writes table.md (also printed), table.csv, table.tex, ladder.png and flips.html into --out, and with W&B online
logs the table and the flipped questions as wandb.Tables (skipped offline, the default without an API key).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

from lmm.compare.bootstrap import DEFAULT_RESAMPLES
from lmm.compare.flips import all_flips, html_page
from lmm.compare.plot import plot
from lmm.compare.render import csv_text, latex, markdown
from lmm.compare.runs import find_run_folders, group_rungs, load_run, select
from lmm.compare.table import Comparison, compare
from lmm.compare.wandb_io import log_comparison, pull_project

OUTPUTS = {"markdown": "table.md", "csv": "table.csv", "latex": "table.tex", "plot": "ladder.png",
           "flips": "flips.html"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lmm.compare", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="run folders, globs, or folders holding run folders (a sweep's output)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: outputs/compare/<time>)")
    p.add_argument("--benchmarks", default=None,
                   help="comma-separated benchmark names or kinds, in column order (default: all, GQA/MME/MM-Vet "
                        "first)")
    p.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default %(default)s)")
    paper = p.add_mutually_exclusive_group()
    paper.add_argument("--paper", dest="paper", action="store_true", default=None,
                       help="show the paper's numbers (default: only when a run used preset=paper)")
    paper.add_argument("--no-paper", dest="paper", action="store_false")
    p.add_argument("--costs", action="store_true", help="add cost columns (trainable parameters, visual tokens, "
                                                        "training time, samples/s, peak memory)")
    p.add_argument("--max-flips", type=int, default=40, help="flipped questions shown per rung pair and benchmark")
    p.add_argument("--wandb", choices=("auto", "off"), default="auto",
                   help="auto: log to W&B when it is online and the runs logged there; off: never")
    p.add_argument("--wandb-project", default=None,
                   help="entity/project: also read that W&B project's runs (online only)")
    return p.parse_args(argv)


def write_outputs(c: Comparison, out: Path, costs: bool, max_flips: int) -> tuple[dict[str, Path], list]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in OUTPUTS.items()}
    paths["markdown"].write_text(markdown(c, costs), encoding="utf-8")
    paths["csv"].write_text(csv_text(c), encoding="utf-8")
    paths["latex"].write_text(latex(c, costs), encoding="utf-8")
    plot(c, paths["plot"])
    sets = all_flips(c)
    paths["flips"].write_text(html_page(c, sets, max_flips), encoding="utf-8")
    return paths, sets


def _wandb_project(c: Comparison) -> str | None:
    """The W&B project the runs logged to (their WandbLogger config), None when none of them has a W&B run."""
    for rung in c.rungs:
        for run in rung.runs:
            if not (run.folder / "wandb").is_dir():
                continue
            for spec in run.config.get("logger") or []:
                if isinstance(spec, dict) and str(spec.get("_target_", "")).endswith("WandbLogger"):
                    entity, project = select(spec, "entity"), select(spec, "project") or "lmm"
                    return f"{entity}/{project}" if entity else str(project)
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    folders = find_run_folders(args.runs)
    if args.wandb_project:
        folders += pull_project(args.wandb_project, Path(tempfile.mkdtemp(prefix="lmm-compare-wandb-")))
    if not folders:
        print("no run folders found", file=sys.stderr)
        return 2
    rungs = group_rungs([load_run(f) for f in folders])
    benchmarks = [b.strip() for b in args.benchmarks.split(",")] if args.benchmarks else None
    c = compare(rungs, benchmarks, resamples=args.resamples, seed=args.seed, show_paper=args.paper)
    out = args.out or Path("outputs") / "compare" / time.strftime("%Y%m%d-%H%M%S")
    paths, sets = write_outputs(c, out, args.costs, args.max_flips)
    print(markdown(c, args.costs))
    project = _wandb_project(c) if args.wandb == "auto" else None
    if project:
        print(log_comparison(c, sets, project, out))
    elif args.wandb == "auto":
        print("W&B: the runs have no W&B run; skipped")
    print(f"{len(folders)} runs, {len(rungs)} rungs in {time.perf_counter() - started:.1f}s; wrote "
          + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        sys.exit(main())
