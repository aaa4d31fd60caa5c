"""Benchmark analogs: held-out scenes of the tiny world written in the files of LLaVA-1.5's twelve benchmarks and of
RefCOCO, in LLaVA's playground/data/eval layout, so lmm's real loaders and scorers run on them end to end
(conf/eval/tiny.yaml; the tiny_* configs name the files).

    common     seeded held-out scene streams, writers, simulated human annotators
    short      VQAv2, GQA, VizWiz, TextVQA        (short answers, VQA accuracy / exact match)
    yesno      POPE, MME                          (yes/no: F1 per negative sampling, acc + acc+)
    choice     ScienceQA, MMBench, MMBench-CN, SEED (option letters, circular for MMBench)
    open       MM-Vet, LLaVA-Bench                (judge-graded)
    grounding  RefCOCO                            (a box, Acc@0.5)

Questions come from lmm.world.questions, the same generators the training sources use, about scenes no source
holds: each analog draws from its own stream random.Random(f"{seed}-bench-{name}"), so changing one analog's size
leaves every other analog's files byte-identical. Knowledge questions (MM-Vet "know", the fact items of MMBench,
SEED, ScienceQA and LLaVA-Bench) ask only about the HELD-OUT facts (`facts` = knowledge.split_facts(seed)[1]), which
no training record states: a right answer needs the LLM's pretraining knowledge.

Sizes (DEFAULT_SIZES, overridden by conf/world/<world>.yaml spec.benchmarks) are questions per analog, except POPE
(questions over its three splits together), MME (questions, two per image, over six subtasks) and MMBench / -CN
(base questions; each is asked once per rotation, 2-4 rows). Why the headline analogs are large: comparing two
models on the same questions, the standard error of the difference in accuracy is about sqrt(d / n), d the fraction
of questions whose correctness differs between them (~0.15 for neighbouring rungs of the ladder), n the questions.
  GQA    n = 2000: SE = sqrt(0.15 / 2000) = 0.87 points, so a 2-point difference is 2.3 SE (two-sided p ~ 0.02).
  MM-Vet n = 1500: SE = 1.00 point, 2 points = 2.0 SE (p ~ 0.05); its partial credits (<AND>) only lower d.
         At n = 1000 it would be 1.6 SE (p ~ 0.10): enough for a one-sided test, not a two-sided one.
  80% power for 2 points at p < 0.05 would need n = 0.15 * (1.96 + 0.84)^2 / 0.02^2 ~ 2900 questions.
The others are ranked, not tested, at 100-900 questions; all analogs together ask ~8,500 prompts, about a minute of
batched generation for a tiny model on this 2-core CPU (experiments/eval_speed.md: 100-190 questions/s).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lmm.world.benchmarks.choice import build_mmbench, build_scienceqa, build_seed
from lmm.world.benchmarks.common import stream
from lmm.world.benchmarks.grounding import build_refcoco
from lmm.world.benchmarks.open import build_llava_bench, build_mmvet
from lmm.world.benchmarks.short import build_gqa, build_textvqa, build_vizwiz, build_vqav2
from lmm.world.benchmarks.yesno import build_mme, build_pope

__all__ = ["BENCHMARKS", "DEFAULT_SIZES", "build_benchmarks"]

DEFAULT_SIZES: dict[str, int] = {
    "vqav2": 300, "gqa": 2000, "vizwiz": 200, "scienceqa": 200, "textvqa": 500, "pope": 900, "mme": 600,
    "mmbench": 300, "mmbench_cn": 100, "seed": 300, "llava_bench": 60, "mmvet": 1500, "refcoco": 500,
}
# name -> (folder under root, builder(folder, size, rng, facts))
BENCHMARKS: dict[str, tuple[str, Any]] = {
    "vqav2": ("vqav2", lambda d, n, rng, facts: build_vqav2(d, n, rng)),
    "gqa": ("gqa", lambda d, n, rng, facts: build_gqa(d, n, rng)),
    "vizwiz": ("vizwiz", lambda d, n, rng, facts: build_vizwiz(d, n, rng)),
    "scienceqa": ("scienceqa", build_scienceqa),
    "textvqa": ("textvqa", lambda d, n, rng, facts: build_textvqa(d, n, rng)),
    "pope": ("pope", lambda d, n, rng, facts: build_pope(d, n, rng)),
    "mme": ("MME", lambda d, n, rng, facts: build_mme(d, n, rng)),
    "mmbench": ("mmbench", build_mmbench),
    "mmbench_cn": ("mmbench", lambda d, n, rng, facts: build_mmbench(d, n, rng, facts, lang="cn")),
    "seed": ("seed_bench", build_seed),
    "llava_bench": ("llava-bench-in-the-wild", build_llava_bench),
    "mmvet": ("mm-vet", build_mmvet),
    "refcoco": ("refcoco", lambda d, n, rng, facts: build_refcoco(d, n, rng)),
}
assert set(BENCHMARKS) == set(DEFAULT_SIZES)


def build_benchmarks(root: Path, sizes: Mapping[str, int] | None, seed: int, facts: set[tuple[str, str]],
                     progress: bool = True) -> dict[str, dict[str, Any]]:
    """Write the analogs under `root` (= <world data>/eval): `sizes` overrides DEFAULT_SIZES per analog (0 leaves
    one out), `facts` are the facts the knowledge questions may ask about (the held-out half). Returns, per analog,
    its folder (relative to root) and how many questions (rows to answer) and images it wrote."""
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    if unknown := set(sizes) - set(BENCHMARKS):
        raise ValueError(f"unknown benchmark analogs {sorted(unknown)}; known: {sorted(BENCHMARKS)}")
    if not facts:
        raise ValueError("no facts to ask about: pass the held-out half of knowledge.split_facts(seed)")
    facts = set(facts)
    root = Path(root)
    out: dict[str, dict[str, Any]] = {}
    names = [name for name in BENCHMARKS if int(sizes[name]) > 0]
    for name in tqdm(names, desc="benchmark analogs", disable=not progress):
        folder, build = BENCHMARKS[name]
        built = build(root / folder, int(sizes[name]), stream(seed, name), facts)
        out[name] = {"folder": folder, **built}
    return out
