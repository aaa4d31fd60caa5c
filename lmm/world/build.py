"""The tiny world, built once on this machine: its backbones (lmm.world.zoo), its training sources
(lmm.world.sources) and its benchmark analogs (lmm.world.benchmarks), all from one seed.

conf/world/tiny.yaml is the one place its sizes, seed and paths are written; the tiny preset's `prepare` step calls
`ensure_world` with them before anything else. The build goes into a temporary folder that is renamed into place
(so parallel sweep jobs can race for it safely) and is stamped with its spec: an identical build is reused.

    <root>/tokenizer, llama-tiny, llama-tiny-large, clip-tiny-res224, clip-tiny-res336, siglip-tiny-res224,
           siglip-tiny-res336                        the zoo (world.backbones)
    <root>/data/align.json, instruct.json, images/   the training sources (world.data)
    <root>/data/eval/                                the benchmark analogs, LLaVA's playground/data/eval (world.eval)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from transformers.utils import logging as hf_logging

from lmm.data.formats import SHORT_ANSWER
from lmm.data.templates import VICUNA_V1_SYSTEM
from lmm.log import log
from lmm.world.benchmarks import build_benchmarks
from lmm.world.scenes import corpus
from lmm.world.sources import build_sources
from lmm.world.zoo import build_llm, build_siglip_tower, build_tokenizer, build_vision_tower

BUILD_VERSION = 2  # bump when what is built changes, so stale builds are rebuilt


def _build(root: Path, num_align: int, num_instruct: int, num_eval: int, seed: int) -> None:
    """Everything of the world into `root`; the tokenizer first, since the LMs' vocabulary is its."""
    hf_logging.disable_progress_bar()
    texts = corpus(seed) + [VICUNA_V1_SYSTEM, "USER:", "ASSISTANT:", "\n", SHORT_ANSWER]
    tokenizer = build_tokenizer(texts, root / "tokenizer")
    build_llm(root / "llama-tiny", tokenizer, seed=seed)  # stands in for Vicuna-7B
    build_llm(root / "llama-tiny-large", tokenizer, hidden_size=192, num_layers=6, seed=seed)  # for Vicuna-13B
    build_vision_tower(root / "clip-tiny-res224", image_size=32, seed=seed)
    build_vision_tower(root / "clip-tiny-res336", image_size=48, seed=seed)
    build_siglip_tower(root / "siglip-tiny-res224", image_size=32, seed=seed)
    build_siglip_tower(root / "siglip-tiny-res336", image_size=48, seed=seed)
    build_sources(root / "data", num_align, num_instruct, num_eval, seed)
    build_benchmarks(root / "data" / "eval", max(4, num_eval // 4), seed)


def ensure_world(root: str | os.PathLike, num_align: int = 4000, num_instruct: int = 4000, num_eval: int = 200,
                 seed: int = 0) -> Path:
    """Build the tiny world under `root` unless an identical build (same spec and BUILD_VERSION) is there."""
    root_path = Path(root)
    spec = {"version": BUILD_VERSION, "num_align": num_align, "num_instruct": num_instruct, "num_eval": num_eval,
            "seed": seed}
    stamp = root_path / "BUILT.json"
    if stamp.exists() and json.loads(stamp.read_text()) == spec:
        return root_path
    root_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root_path.parent))
    try:
        log.info(f"building the tiny world (backbones + data) into {root_path} ...")
        _build(tmp, num_align, num_instruct, num_eval, seed)
        (tmp / "BUILT.json").write_text(json.dumps(spec))
        if stamp.exists() and json.loads(stamp.read_text()) == spec:  # another process won the race
            return root_path
        if root_path.exists():
            shutil.rmtree(root_path)
        os.replace(tmp, root_path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root_path
