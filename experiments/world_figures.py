"""The figures of experiments/world.md from run folders, with lmm.compare's loading and paired bootstrap: every
benchmark's headline per run, paired differences between two runs on every benchmark they share (full mixture vs
conversations only, seeing vs blind), seeing vs blind split by the form of the question (what the image is used
for), and TextVQA split by the print size of its sign at two input resolutions.

    python experiments/world_figures.py full=<run> conv=<run> blind=<run> res224=<run> res336=<run> > figures.md

Each name is optional; a figure appears when its runs are given. Intervals: 95% paired bootstrap over the
benchmark's questions (the benchmark's own resampling unit), 2000 resamples, seed 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from lmm.compare import bootstrap as bs
from lmm.compare.runs import Run, load_run

PAIRS = [("conv", "full", "full mixture - conversations only"), ("blind", "full", "seeing - blind")]


def headline_table(runs: dict[str, Run]) -> str:
    benches = list(dict.fromkeys(b for r in runs.values() for b in r.benchmarks))
    lines = ["| benchmark | metric | " + " | ".join(runs) + " |", "|---|---|" + "---|" * len(runs)]
    for b in benches:
        metric = next(r.benchmarks[b].metric for r in runs.values() if b in r.benchmarks)
        cells = [f"{r.benchmarks[b].headline:.1f}" if b in r.benchmarks and r.benchmarks[b].headline is not None
                 else "-" for r in runs.values()]
        lines.append(f"| {b} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_change(kind: str, before: list[dict], after: list[dict]) -> tuple[float, float, float] | None:
    """after - before in the benchmark's own metric, and its 95% paired bootstrap interval."""
    stat = bs.statistic_for(kind)
    if stat is None or not before or not after:
        return None
    tables = [[bs.unit_table(stat, before)], [bs.unit_table(stat, after)]]
    samples, note = bs.bootstrap_rungs(stat, tables, bs.DEFAULT_RESAMPLES, seed=0)
    if note or samples[0] is None or samples[1] is None:
        return None
    delta = bs.point_value(stat, *tables[1][0]) - bs.point_value(stat, *tables[0][0])
    return (delta, *bs.interval(samples[1] - samples[0]))


def _fmt(change: tuple[float, float, float] | None) -> str:
    return "-" if change is None else "{:+.1f} [{:+.1f}, {:+.1f}]{}".format(*change, "*" * (change[1] > 0 or
                                                                                          change[2] < 0))


def pair_table(a: Run, b: Run) -> str:
    lines = ["| benchmark | change, 95% CI |", "|---|---|"]
    for name, result in b.benchmarks.items():
        if name in a.benchmarks:
            change = paired_change(result.kind, a.benchmarks[name].records(), result.records())
            lines.append(f"| {name} | {_fmt(change)} |")
    return "\n".join(lines)


FORM_BENCHMARKS = ("tiny_vqav2", "tiny_gqa")


def question_form(question: str) -> str:
    """What a short question asks for, from its first words: colour, count, size, yes/no or kind (any other what/which:
    the kind of an object, what is inside, which is bigger)."""
    q = question.split("\n")[0].lower()
    if q.startswith(("what colour", "what is the colour")):
        return "colour"
    if q.startswith("how many"):
        return "count"
    if q.startswith("what size"):
        return "size"
    if q.startswith(("what", "which")):
        return "kind"
    return "yes/no" if q.split()[0] in ("is", "are", "does") else "other"


def form_table(blind: Run, seeing: Run) -> str:
    lines = ["| benchmark | question form | questions | seeing | blind | seeing - blind, 95% CI |",
             "|---|---|---|---|---|---|"]
    for name in FORM_BENCHMARKS:
        if name not in seeing.benchmarks or name not in blind.benchmarks:
            continue
        kind = seeing.benchmarks[name].kind
        both = [seeing.benchmarks[name].records(), blind.benchmarks[name].records()]
        for form in sorted({question_form(r["question"]) for r in both[0]}):
            recs = [[r for r in rs if question_form(r["question"]) == form] for rs in both]
            means = [100 * np.mean([r["score"] for r in rs]) for rs in recs]
            change = paired_change(kind, recs[1], recs[0])
            lines.append(f"| {name} | {form} | {len(recs[0])} | {means[0]:.1f} | {means[1]:.1f} | {_fmt(change)} |")
    return "\n".join(lines)


def print_sizes(run: Run) -> dict[str, str]:
    """image id (TextVQA's answers are keyed by it) -> the print size of its sign ('large' | 'small')."""
    image = run.benchmarks["tiny_textvqa"].records()[0]["image"]
    questions = Path(image).parents[1] / "TextVQA_0.5.1_val.json"
    return {d["image_id"]: d["sign_print"] for d in json.loads(questions.read_text())["data"]}


def small_print_table(low: Run, high: Run) -> str:
    sizes = print_sizes(low)
    lines = ["| print | questions | low res | high res | high - low, 95% CI |", "|---|---|---|---|---|"]
    for size in ("large", "small"):
        recs = [[r for r in run.benchmarks["tiny_textvqa"].records() if sizes.get(r["question_id"]) == size]
                for run in (low, high)]
        means = [100 * np.mean([r["score"] for r in rs]) for rs in recs]
        change = paired_change("textvqa", *recs)
        lines.append(f"| {size} | {len(recs[0])} | {means[0]:.1f} | {means[1]:.1f} | {_fmt(change)} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    runs = {k: load_run(Path(v)) for k, v in (a.split("=", 1) for a in argv)}
    print("## Headlines\n\n" + headline_table(runs))
    for before, after, title in PAIRS:
        if before in runs and after in runs:
            print(f"\n## {title}\n\n" + pair_table(runs[before], runs[after]))
    if "full" in runs and "blind" in runs:
        print("\n## seeing - blind by question form\n\n" + form_table(runs["blind"], runs["full"]))
    if "res224" in runs and "res336" in runs:
        print("\n## TextVQA by print size\n\n" + small_print_table(runs["res224"], runs["res336"]))


if __name__ == "__main__":
    main(sys.argv[1:])
