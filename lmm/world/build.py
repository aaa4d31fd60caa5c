"""The tiny world, built once on this machine: its data (lmm.world.sources, lmm.world.benchmarks) and its zoo of tiny
backbones pretrained on it (lmm.world.zoo), all from one spec (conf/world/tiny.yaml `spec`).

The tiny preset's `prepare` step calls `ensure_world`. The folder is named by the spec's hash (lmm.world.spec), the
build goes into a temporary folder renamed into place at the end (parallel sweep jobs can race for it safely; an
interrupted build leaves no half world), and world.json beside it records the spec, each step's time and the zoo's
own figures (retrieval accuracy, perplexities), which experiments/world.md reports.

    <root>/data/               the paper's data layout (LLaVA-Pretrain/, llava_v1_5_mix665k.json, coco/, gqa/, ...)
    <root>/data/eval/          the benchmark analogs, in LLaVA's playground/data/eval layout
    <root>/tokenizer, llama-tiny, llama-tiny-large, clip-tiny-res224, clip-tiny-res336, siglip-tiny-res224,
           siglip-tiny-res336  the zoo, in the Hugging Face format
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image
from transformers.utils import logging as hf_logging

from lmm.data.formats import PROMPTS
from lmm.data.templates import VICUNA_V1_SYSTEM
from lmm.log import log
from lmm.world.benchmarks import build_benchmarks
from lmm.world.knowledge import split_facts
from lmm.world.lm_text import grid_documents, grid_probes, lookup_auc, pretraining_text, reading_documents
from lmm.world.questions import caption, contrast_caption
from lmm.world.scenes import Scene, drawing, render, sample_scene
from lmm.world.sources import Images, build_sources
from lmm.world.spec import plain_spec
from lmm.world.zoo import build_siglip_tower, build_tokenizer, pretrain_clip, pretrain_llm

STAMP = "world.json"
ARCHITECTURE = ("patch_size", "hidden_size", "num_layers", "text_hidden_size", "text_layers", "projection_dim")


def _timed(report: dict[str, Any], step: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    log.info(f"world: {step} ...")
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    seconds = round(time.perf_counter() - start, 1)
    report["seconds"][step] = seconds
    if isinstance(out, dict):
        report["figures"][step] = {k: v for k, v in out.items() if isinstance(v, (int, float, str, dict, list))}
    log.info(f"world: {step} done in {seconds:.0f} s")
    return out


def stage1_pairs(data: Path, seed: int) -> tuple[list[Image.Image], list[str], list[Scene]]:
    """The stage-1 (LCS-558K analog) images, captions and scenes (their ground truth, from the image's index in its
    pool): CLIP's pretraining pairs, as LAION is CLIP-L/14's."""
    folder = data / "LLaVA-Pretrain"
    records = json.loads((folder / "blip_laion_cc_sbu_558k.json").read_text())
    images, pool = [], Images(data, seed)
    for r in records:
        with Image.open(folder / "images" / r["image"]) as img:
            images.append(img.convert("RGB"))
    scenes = [pool.scene("lcs", int(Path(r["image"]).stem)) for r in records]
    return images, [r["conversations"][1]["value"] for r in records], scenes


def heldout_pairs(n: int, seed: int) -> tuple[list[Image.Image], list[str]]:
    """Fresh scenes (in no source or benchmark) and their captions, for CLIP's held-out retrieval accuracy."""
    rng = random.Random(f"{seed}-clip-heldout")
    scenes = [sample_scene(rng) for _ in range(n)]
    return [render(s) for s in scenes], [caption(s, rng) for s in scenes]


def lm_documents(text: dict[str, Any], seed: int) -> tuple[list[str], list[str]]:
    """The LMs' documents beside the world's text (lmm.world.lm_text), each kind from its own seeded stream: `reading`
    grid documents for the steps before the text, and `documents` ({"reading": n, "grid": m}: description and grid
    documents) for rows beside it; none when the spec has neither key."""
    reading = grid_documents(random.Random(f"{seed}-lm-first"), text.get("reading", 0))
    sizes = text.get("documents", {})
    documents = (reading_documents(random.Random(f"{seed}-lm-reading"), sizes.get("reading", 0))
                 + grid_documents(random.Random(f"{seed}-lm-grid"), sizes.get("grid", 0)))
    return reading, documents


def hard_negatives(captions: list[str], k: int, seed: int) -> list[list[str]] | None:
    """k captions per stage-1 caption with one thing changed (contrast_caption), seeded; None when k is 0."""
    if not k:
        return None
    rng = random.Random(f"{seed}-clip-negatives")
    return [[contrast_caption(c, rng) for _ in range(k)] for c in captions]


def _build(root: Path, spec: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Everything of the world into `root`, its pictures drawn as the spec says (`textured`: each kind's shape filled
    with its own pattern, lmm.world.scenes.texture; absent = plain)."""
    with drawing(spec.get("textured", False)):
        return _build_drawn(root, spec, progress)


def _build_drawn(root: Path, spec: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Data first (the zoo learns from it), then the tokenizer and the zoo."""
    hf_logging.disable_progress_bar()
    seed, zoo = spec["seed"], spec["zoo"]
    report: dict[str, Any] = {"seconds": {}, "figures": {}}
    train_facts, heldout_facts = split_facts(seed)
    data = root / "data"
    _timed(report, "sources", build_sources, data, spec["sources"], seed, train_facts, progress=progress)
    _timed(report, "benchmarks", build_benchmarks, data / "eval", spec["benchmarks"], seed, heldout_facts,
           progress=progress)

    text, heldout_text = (pretraining_text(random.Random(f"{seed}-lm-{part}"), zoo["text"][part])
                          for part in ("train", "heldout"))
    prompts = [VICUNA_V1_SYSTEM, "USER:", "ASSISTANT:", *(p for p in PROMPTS.values() if p)]
    tokenizer = _timed(report, "tokenizer", build_tokenizer, text + prompts, root / "tokenizer",
                       vocab_size=zoo["vocab_size"])
    reading, documents = lm_documents(zoo["text"], seed)
    # the lookup the reading documents teach, scored on held-out ones: the LMs read until it shows (reading_target)
    probes = grid_probes(random.Random(f"{seed}-lm-probes"), zoo["text"].get("probes", 0))
    check = partial(lookup_auc, tokenizer=tokenizer, probes=probes) if probes else None
    for name, folder in (("llm_small", "llama-tiny"), ("llm_large", "llama-tiny-large")):
        recipe = dict(zoo[name])
        if grow := recipe.pop("grow", None):  # the larger LM continues the smaller one, deeper
            recipe.update(grow_from=root / "llama-tiny", repeat_layers=grow)
        _timed(report, name, pretrain_llm, root / folder, tokenizer, text, heldout_texts=heldout_text, seed=seed,
               progress=progress, reading=reading if recipe.get("reading_steps") else (),
               documents=documents if recipe.get("documents_share") else (), reading_check=check, **recipe)

    images, captions, scenes = stage1_pairs(data, seed)
    heldout = heldout_pairs(zoo["clip"]["heldout"], seed)
    # hard negatives per caption (optional; a spec without the key is the world it always was)
    low = {k: v for k, v in zoo["clip"]["low"].items() if k != "hard_negatives"}
    negatives = hard_negatives(captions, zoo["clip"]["low"].get("hard_negatives", 0), seed)
    # the higher resolution continues the lower one: same architecture, the recipe of `high` over `low`'s
    high = {**{k: v for k, v in low.items() if k not in ARCHITECTURE}, **zoo["clip"]["high"]}
    _timed(report, "clip_res224", pretrain_clip, root / "clip-tiny-res224", images, captions, tokenizer,
           heldout=heldout, seed=seed, progress=progress, negatives=negatives, scenes=scenes, **low)
    _timed(report, "clip_res336", pretrain_clip, root / "clip-tiny-res336", images, captions, tokenizer,
           heldout=heldout, seed=seed, progress=progress, init_from=root / "clip-tiny-res224", negatives=negatives,
           scenes=scenes, **high)
    for res, size in (("res224", low["image_size"]), ("res336", high["image_size"])):
        build_siglip_tower(root / f"siglip-tiny-{res}", image_size=size, patch_size=low["patch_size"],
                           hidden_size=low["hidden_size"], num_layers=low["num_layers"], seed=seed)
    return report


def ensure_world(root: str | os.PathLike, spec: Any, progress: bool = True) -> Path:
    """Build the world of `spec` into `root` unless it is there (its stamp holds the same spec)."""
    root_path = Path(root)
    wanted = plain_spec(spec)
    stamp = root_path / STAMP

    def built() -> bool:
        return stamp.exists() and json.loads(stamp.read_text()).get("spec") == wanted

    if built():
        return root_path
    root_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".building-{root_path.name}-", dir=root_path.parent))
    try:
        log.info(f"building the tiny world (data + pretrained backbones) into {root_path}: once per spec")
        start = time.perf_counter()
        report = _build(tmp, wanted, progress)
        report["spec"] = wanted
        report["seconds"]["total"] = round(time.perf_counter() - start, 1)
        (tmp / STAMP).write_text(json.dumps(report, indent=1))
        if built():  # another process won the race
            return root_path
        if root_path.exists():  # a half or stale folder of the same name (no matching stamp)
            shutil.rmtree(root_path)
        os.replace(tmp, root_path)
        log.info(f"world built in {report['seconds']['total'] / 60:.1f} min: {root_path}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root_path


def configured_world(cache_dir: str | os.PathLike, world: str = "tiny", overrides: tuple[str, ...] = (),
                     progress: bool = True) -> Path:
    """The world `python run.py world=<world> paths.cache_dir=<cache_dir>` uses, built if need be (for scripts)."""
    from hydra import compose, initialize_config_dir

    from lmm.config import register_resolvers

    register_resolvers()
    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = compose(config_name="config", overrides=[f"world={world}", f"paths.cache_dir={cache_dir}", *overrides])
    return ensure_world(cfg.world.root, cfg.world.spec, progress=progress)
