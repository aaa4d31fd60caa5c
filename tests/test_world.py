"""The tiny world's config group (conf/world/tiny.yaml) is the one place its sizes, seed and paths are written: the
preset's build step, the checkpoints and the data options all follow it."""

from __future__ import annotations

from pathlib import Path

from tests.test_config import cfg_of


def test_moving_or_resizing_the_world_moves_everything_that_reads_it(tmp_path):
    root = tmp_path / "elsewhere"
    for data in ("world", "world_mix"):
        cfg = cfg_of(f"data={data}", f"world.root={root}", "world.num_align=7", "world.seed=3")
        (build,) = cfg.prepare
        assert build._target_ == "lmm.world.build.ensure_world"
        assert (build.root, build.num_align, build.num_instruct, build.seed) == (str(root), 7, 4000, 3)
        assert Path(cfg.world.data) == root / "data" and Path(cfg.world.eval) == root / "data" / "eval"
        checkpoints = [cfg.checkpoints[family][size] for family in ("clip", "siglip") for size in ("res224", "res336")]
        checkpoints += [cfg.checkpoints.llm.vicuna7b, cfg.checkpoints.llm.vicuna13b]
        assert sorted(Path(c).parent for c in checkpoints) == [root] * 6 and len(set(checkpoints)) == 6
        for stage in ("align", "instruct"):
            for source in cfg.data[stage].sources:
                assert Path(source.records).parent == root / "data" and Path(source.image_root) == root / "data"
        assert cfg.model.encoder.pretrained == cfg.world.backbones.clip_res224
        assert cfg.model.llm.pretrained == cfg.world.backbones.llm_small


def test_the_world_build_writes_what_its_config_names(tiny_world):
    """Every folder conf/world/tiny.yaml names exists in a built world (the build writes fixed names beside it)."""
    cfg = cfg_of(f"paths.cache_dir={tiny_world}")
    for folder in [*cfg.world.backbones.values(), cfg.world.data, cfg.world.eval]:
        assert Path(folder).is_dir(), folder
    for name in ("align.json", "instruct.json", "eval_vqa.jsonl"):
        assert (Path(cfg.world.data) / name).is_file()


def test_an_identical_world_is_not_built_twice(tiny_world):
    from lmm.world.build import ensure_world

    root = tiny_world / "tiny-world"
    stamp = (root / "BUILT.json").stat().st_mtime_ns
    assert ensure_world(root, num_align=96, num_instruct=96, num_eval=16) == root  # conftest's spec
    assert (root / "BUILT.json").stat().st_mtime_ns == stamp
