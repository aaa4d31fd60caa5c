"""The tiny world's config group (conf/world/) is the one place its sizes, seed and paths are written: the preset's
build step, the checkpoints and the data options all follow it, and the folder is named by the spec's hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.conftest import SMALL_WORLD, world_root
from tests.test_config import cfg_of


def test_everything_that_reads_the_world_follows_its_folder(tmp_path):
    cfg = cfg_of(f"paths.cache_dir={tmp_path}", SMALL_WORLD)
    root = Path(cfg.world.root)
    assert root.parent == tmp_path / "worlds" and root.name.startswith("small-")
    (build,) = cfg.prepare
    assert build._target_ == "lmm.world.build.ensure_world" and Path(build.root) == root
    assert build.spec == cfg.world.spec
    assert Path(cfg.paths.data_root) == root / "data" and Path(cfg.world.eval) == root / "data" / "eval"
    checkpoints = [cfg.checkpoints[family][size] for family in ("clip", "siglip") for size in ("res224", "res336")]
    checkpoints += [cfg.checkpoints.llm.vicuna7b, cfg.checkpoints.llm.vicuna13b]
    assert sorted(Path(c).parent for c in checkpoints) == [root] * 6 and len(set(checkpoints)) == 6
    for stage in ("align", "instruct"):
        for source in cfg.data[stage].sources:
            assert Path(source.records).is_relative_to(root / "data")
            assert Path(source.image_root).is_relative_to(root / "data")
    assert cfg.model.encoder.pretrained == cfg.world.backbones.clip_res224
    assert cfg.model.llm.pretrained == cfg.world.backbones.llm_small
    okvqa = {s.name: s.okvqa_ids for s in cfg.data.instruct.sources if s.name in ("vqav2", "okvqa")}
    assert okvqa == {"vqav2": str(root / "data" / "okvqa_ids.txt"), "okvqa": str(root / "data" / "okvqa_ids.txt")}


@pytest.mark.parametrize("change", ["world.spec.seed=1", "world.spec.sources.gqa=13", "world.spec.zoo.vocab_size=999",
                                    "world.spec.zoo.clip.low.steps=4", "world.spec.benchmarks.mme=10"])
def test_a_changed_world_gets_a_folder_of_its_own(tmp_path, change):
    base = cfg_of(f"paths.cache_dir={tmp_path}", SMALL_WORLD)
    other = cfg_of(f"paths.cache_dir={tmp_path}", SMALL_WORLD, change)
    assert other.world.root != base.world.root
    assert cfg_of(f"paths.cache_dir={tmp_path}", SMALL_WORLD).world.root == base.world.root  # stable


def test_a_new_builder_version_gets_a_folder_of_its_own(tmp_path, monkeypatch):
    import lmm.world.spec as spec

    before = cfg_of(f"paths.cache_dir={tmp_path}", SMALL_WORLD).world.root
    monkeypatch.setattr(spec, "BUILD_VERSION", spec.BUILD_VERSION + 1)
    assert cfg_of(f"paths.cache_dir={tmp_path}", SMALL_WORLD).world.root != before


def test_the_world_build_writes_what_its_config_names(tiny_world):
    cfg = cfg_of(f"paths.cache_dir={tiny_world}", SMALL_WORLD)
    for folder in [*cfg.world.backbones.values(), cfg.world.data, cfg.world.eval]:
        assert Path(folder).is_dir(), folder
    for source in [*cfg.data.align.sources, *cfg.data.instruct.sources]:
        assert Path(source.records).is_file() and Path(source.image_root).is_dir()
    assert Path(cfg.data.catalog.okvqa.okvqa_ids).is_file()
    report = json.loads((Path(cfg.world.root) / "world.json").read_text())
    assert set(report["seconds"]) >= {"sources", "benchmarks", "tokenizer", "llm_small", "llm_large", "clip_res224",
                                      "clip_res336", "total"}


def test_an_identical_world_is_not_built_twice(tiny_world):
    from lmm.world.build import ensure_world

    cfg = cfg_of(f"paths.cache_dir={tiny_world}", SMALL_WORLD)
    root = world_root(tiny_world)
    stamp = (root / "world.json").stat().st_mtime_ns
    assert ensure_world(root, cfg.world.spec) == root
    assert (root / "world.json").stat().st_mtime_ns == stamp


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "world.json"}  # world.json holds times


def test_the_same_seed_gives_byte_identical_files(tmp_path, tiny_world):
    """A second build of the small world, elsewhere, holds the same bytes in every file: data, images and zoo."""
    from lmm.world.build import ensure_world

    cfg = cfg_of(f"paths.cache_dir={tiny_world}", SMALL_WORLD)
    again = ensure_world(tmp_path / "again", cfg.world.spec, progress=False)
    first, second = _hashes(world_root(tiny_world)), _hashes(again)
    assert len(first) > 100 and any(k.endswith(".safetensors") for k in first)
    assert first == second


def test_a_half_built_folder_is_rebuilt(tmp_path, monkeypatch):
    """A folder of the right name without a matching stamp (a crash, a copy) is replaced, not trusted."""
    import lmm.world.build as build

    calls = []
    monkeypatch.setattr(build, "_build", lambda root, spec, progress: calls.append(root) or {"seconds": {}})
    root = tmp_path / "w"
    root.mkdir()
    (root / "junk").write_text("half")
    build.ensure_world(root, {"seed": 0})
    assert len(calls) == 1 and not (root / "junk").exists()
    assert json.loads((root / "world.json").read_text())["spec"]["seed"] == 0
    build.ensure_world(root, {"seed": 0})
    assert len(calls) == 1
    stale = json.loads((root / "world.json").read_text())
    stale["spec"]["seed"] = 1  # a stamp of another spec in this folder: not this world
    (root / "world.json").write_text(json.dumps(stale))
    build.ensure_world(root, {"seed": 0})
    assert len(calls) == 2 and json.loads((root / "world.json").read_text())["spec"]["seed"] == 0


def test_the_world_is_drawn_as_its_spec_says_and_its_clip_pairs_keep_their_scenes(tiny_world):
    """The tiny spec draws kinds with textures: the stage-1 images on disk are their scenes' textured renders (the
    scenes the CLIP's per-patch targets come from), not the plain ones; the large LM is the small one grown."""
    import numpy as np
    from transformers import AutoConfig

    from lmm.world.build import stage1_pairs
    from lmm.world.scenes import render

    cfg = cfg_of(f"paths.cache_dir={tiny_world}", SMALL_WORLD)
    assert cfg.world.spec.textured
    images, captions, scenes = stage1_pairs(Path(cfg.world.data), cfg.world.spec.seed)
    assert len(images) == len(captions) == len(scenes) == cfg.world.spec.sources.lcs558k
    plain_differs = 0
    for image, scene in zip(images, scenes, strict=True):
        assert (np.array(image) == np.array(render(scene, textured=True))).all()
        plain_differs += bool((np.array(image) != np.array(render(scene, textured=False))).any())
    assert plain_differs > len(images) // 2
    small, large = (AutoConfig.from_pretrained(cfg.world.backbones[k]) for k in ("llm_small", "llm_large"))
    assert large.num_hidden_layers == 2 * small.num_hidden_layers and large.hidden_size == small.hidden_size
    figures = json.loads((Path(cfg.world.root) / "world.json").read_text())["figures"]
    assert [s for s, _ in figures["llm_small"]["reading_checks"]] == [1, 2]  # the lookup checked while reading
    assert all(0 <= figures[k]["final_check"] <= 1 for k in ("llm_small", "llm_large"))
