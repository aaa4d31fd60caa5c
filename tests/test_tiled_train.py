"""High-resolution arms beside the ladder (conf/ablation/hd.yaml, hd_no_global.yaml, anyres.yaml): they compose at
both presets with the right tower and tiling, share their tower's align stage, and run a few steps end to end on the
small world (align -> instruct with tiles -> eval), saving image_newline with the connector."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lmm.model.build import input_tiling
from lmm.model.io import load_lmm_model
from lmm.pipeline import align_fingerprint
from tests.test_ablation import rung_cfg
from tests.test_pipeline import SMALL, env_for, run_py

TOWERS = {"tiny": {"res224": "clip-tiny-res224", "res336": "clip-tiny-res336"},
          "paper": {"res224": "openai/clip-vit-large-patch14", "res336": "openai/clip-vit-large-patch14-336"}}


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_arms_compose_with_their_tower_and_share_its_align_stage(preset: str) -> None:
    """HD tiles the base (224-analog) tower, anyres the 336-analog one, under both presets; each arm's align stage is
    the one its tower's rung trains (the paper reuses the stage-1 projector); hd_no_global only drops the global
    image."""
    hd, no_global, anyres = (rung_cfg(a, preset) for a in ("hd", "hd_no_global", "anyres"))
    assert hd.model.encoder.pretrained.endswith(TOWERS[preset]["res224"])
    assert anyres.model.encoder.pretrained.endswith(TOWERS[preset]["res336"])
    assert input_tiling(hd.input) == {"mode": "hd", "max_tiles": 6, "global_context": True}
    assert input_tiling(no_global.input) == {"mode": "hd", "max_tiles": 6, "global_context": False}
    assert input_tiling(anyres.input)["mode"] == "anyres" and input_tiling(rung_cfg("res336", preset).input) is None
    assert align_fingerprint(anyres) == align_fingerprint(rung_cfg("res336", preset))
    assert align_fingerprint(hd) == align_fingerprint(no_global) == align_fingerprint(rung_cfg("region", preset))
    assert hd.ablation.base == "res336" and anyres.ablation.row is None


def test_a_misspelled_tiling_fails_before_anything_is_built() -> None:
    from lmm.config import ConfigError, validate
    from tests.test_config import cfg_of

    with pytest.raises(ConfigError, match="input.tiling"):
        validate(cfg_of("input=hd", "input.tiling=hdd"))


@pytest.mark.parametrize("arm", ["anyres", "hd"])
def test_arm_trains_a_few_steps(tmp_path, tiny_world, arm: str) -> None:
    env = env_for(tmp_path, tiny_world)
    short = [*SMALL, "stage.align.max_steps=2", "stage.instruct.max_steps=2", "num_sample_generations=2",
             "logger=csv", f"+ablation={arm}", "eval=tiny_ladder"]
    proc = run_py(short, env, timeout=900)
    assert "visual tokens per image of the tile's size, more for a larger one" in proc.stdout  # not a fixed count
    (run,) = (tmp_path / "out" / "runs").iterdir()
    results = json.loads((run / "results.json").read_text())
    assert results["stages"]["instruct"]["global_step"] == 2
    tokens = results["stages"]["instruct"]["trained"]["visual_tokens_per_image"]  # the real mean, not a fixed count
    assert tokens > results["stages"]["align"]["model/visual_tokens_per_image"]
    assert results["eval"]["protocol"]["image_preprocessing"]["tiling"]["mode"] == arm
    per_bench = [b["visual_tokens_per_image"] for b in results["eval"]["benchmarks"].values()]
    assert all(t is None or t > 0 for t in per_bench) and results["eval"]["model"]["visual_tokens_per_image"] > 0
    connector = load_file(str(run / "instruct" / "connector.safetensors"))
    assert "image_newline" in connector and any(k.startswith("inner.") for k in connector)
    align = load_file(str(run / "align" / "connector.safetensors"))
    assert "image_newline" not in align  # the align stage trained the plain connector
    assert not torch.equal(connector["inner.proj.0.weight"], align["proj.0.weight"])  # instruct went on from it
    model, _ = load_lmm_model(run / "instruct" / "model")
    assert model.tiled and model.connector.spec.mode == arm
    assert (run / "samples" / "instruct.jsonl").read_text().count("\n") == 2


def test_align_key_ignores_runtime_settings_and_null_options() -> None:
    """More loader workers, another cache folder or a new option left null reuse the align stage; what it computes
    (its learning rate, its data, the encoder) does not."""
    from omegaconf import open_dict

    from tests.test_config import cfg_of

    base = align_fingerprint(cfg_of())
    assert align_fingerprint(cfg_of("data.num_workers=3")) == base
    assert align_fingerprint(cfg_of("data.align.store.cache_dir=/elsewhere/stores")) == base
    with_null = cfg_of()
    with open_dict(with_null):
        with_null.data.align.mixture.new_option = None
        with_null.stage.align.another = None
    assert align_fingerprint(with_null) == base
    with open_dict(with_null):
        with_null.data.align.mixture.new_option = 0  # a value, even a falsy one, is part of the key
    assert align_fingerprint(with_null) != base
    assert align_fingerprint(cfg_of("stage.align.lr=5e-4")) != base
    assert align_fingerprint(cfg_of("data.align.policy.truncate=false")) != base
    assert align_fingerprint(cfg_of("seed=2")) != base
