"""The figures of experiments/world.md, from run folders: every benchmark's headline per run, the change each
instruction source brings on the benchmark it targets (full mixture vs conversations only), a blind control, and
TextVQA split by print size at two input resolutions. Paired differences carry a 95% bootstrap interval over the
benchmark's questions (per-question correctness from the answer files).

    python experiments/world_figures.py full=outputs/runs/world-full conv=outputs/runs/world-conv \
        blind=outputs/runs/world-blind res336=outputs/runs/world-res336 > /tmp/figures.md
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from lmm.eval.scoring.normalize import gqa_postprocess
from lmm.eval.scoring.vqa import vqa_score


def results(run: Path) -> dict:
    return json.loads((run / "eval" / "results.json").read_text())


def headline_table(runs: dict[str, Path]) -> str:
    loaded = {name: results(run) for name, run in runs.items()}
    benches = list(next(iter(loaded.values()))["benchmarks"])
    lines = ["| benchmark | metric | " + " | ".join(runs) + " |", "|---|---|" + "---|" * len(runs)]
    for b in benches:
        metric = loaded[next(iter(loaded))]["benchmarks"][b]["headline_metric"]
        cells = [f"{r['benchmarks'][b]['headline']:.1f}" if b in r["benchmarks"] else "–" for r in loaded.values()]
        lines.append(f"| {b} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _answers(run: Path, bench: str) -> dict[str, str]:
    rows = [json.loads(line) for line in (run / "eval" / bench / "answers.jsonl").read_text().splitlines()]
    return {str(r["question_id"]): r["text"] for r in rows}


def textvqa_correct(run: Path, world_eval: Path) -> dict[str, tuple[float, str]]:
    """Per TextVQA question: (VQA accuracy, print size of its sign)."""
    data = json.loads((world_eval / "textvqa" / "TextVQA_0.5.1_val.json").read_text())["data"]
    answers = _answers(run, "tiny_textvqa")
    return {d["image_id"]: (vqa_score(answers[d["image_id"]], d["answers"]), d["sign_print"]) for d in data}


def gqa_correct(run: Path, world_eval: Path) -> dict[str, float]:
    truth = json.loads((world_eval / "gqa" / "data" / "testdev_balanced_questions.json").read_text())
    answers = _answers(run, "tiny_gqa")
    return {q: float(gqa_postprocess(answers[q]) == t["answer"]) for q, t in truth.items()}


def paired_interval(a: list[float], b: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of b - a in points, and a 95% percentile bootstrap interval over the paired questions."""
    rng = random.Random(seed)
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(draws))
    return 100 * sum(diffs) / n, 100 * means[int(0.025 * draws)], 100 * means[int(0.975 * draws) - 1]


def main(argv: list[str]) -> None:
    runs = {k: Path(v) for k, v in (a.split("=", 1) for a in argv)}
    world_eval = Path(results(next(iter(runs.values())))["benchmarks"]["tiny_gqa"]["files"]["questions"]["path"])
    world_eval = world_eval.parents[1]
    print("## Headlines\n")
    print(headline_table(runs))
    if "full" in runs and "conv" in runs:
        a, b = gqa_correct(runs["conv"], world_eval), gqa_correct(runs["full"], world_eval)
        keys = sorted(a)
        d, lo, hi = paired_interval([a[k] for k in keys], [b[k] for k in keys])
        print(f"\nGQA, full mixture - conversations only: {d:+.1f} points, 95% CI [{lo:+.1f}, {hi:+.1f}] "
              f"over {len(keys)} questions")
    if "full" in runs and "res336" in runs:
        print("\n## TextVQA by print size\n")
        print("| print | n | res224 | res336 | res336 - res224 (95% CI) |\n|---|---|---|---|---|")
        low, high = textvqa_correct(runs["full"], world_eval), textvqa_correct(runs["res336"], world_eval)
        for size in ("large", "small"):
            keys = sorted(k for k, (_, p) in low.items() if p == size)
            x, y = [low[k][0] for k in keys], [high[k][0] for k in keys]
            d, lo, hi = paired_interval(x, y)
            print(f"| {size} | {len(keys)} | {100 * sum(x) / len(x):.1f} | {100 * sum(y) / len(y):.1f} | "
                  f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}] |")


if __name__ == "__main__":
    main(sys.argv[1:])
