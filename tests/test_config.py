"""Every config group option composes and resolves under both presets; mistakes fail early and clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from lmm.config import register_resolvers
from lmm.pipeline import micro_batching

CONF = Path(__file__).resolve().parents[1] / "conf"
register_resolvers()


def cfg_of(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("preset", ["tiny", "paper"])
@pytest.mark.parametrize("override", [f"{g}={o}" for g in ["input", "model/encoder", "model/connector", "model/llm",
                                                                "data", "trainer", "logger"] for o in options(g)])
def test_every_option_composes(preset, override):
    cfg = cfg_of(f"preset={preset}", override)
    assert cfg.model.encoder.pretrained and cfg.model.llm.pretrained


def test_paper_preset_is_the_paper_recipe():
    cfg = cfg_of("preset=paper", "input=res336")
    assert cfg.model.encoder.pretrained == "openai/clip-vit-large-patch14-336"
    assert cfg.model.llm.pretrained == "lmsys/vicuna-7b-v1.5"
    assert cfg.model.max_length == 2048
    a, i = cfg.stage.align, cfg.stage.instruct
    assert (a.lr, a.global_batch_size, a.train, a.image_aspect) == (1e-3, 256, ["connector"], "crop")
    assert (i.lr, i.global_batch_size, i.train, i.image_aspect) == (2e-5, 128, ["connector", "llm"], "pad")
    assert a.warmup_ratio == i.warmup_ratio == 0.03 and a.weight_decay == i.weight_decay == 0.0
    assert cfg.trainer.strategy._target_.endswith("FSDP2Strategy")
    assert cfg.sharding.param_dtype == "bfloat16"
    assert cfg.data.instruct.sources[0].records.endswith("llava_v1_5_mix665k.json")


def test_input_knob_means_the_same_under_both_presets():
    for preset in ("tiny", "paper"):
        low = cfg_of(f"preset={preset}").model.encoder.pretrained
        high = cfg_of(f"preset={preset}", "input=res336").model.encoder.pretrained
        assert low != high and ("336" in high)


def test_cli_override_wins_over_preset():
    cfg = cfg_of("preset=paper", "trainer=ddp", "stage.instruct.lr=1e-5")
    assert cfg.trainer.strategy._target_.endswith("DDPStrategy") and cfg.stage.instruct.lr == 1e-5


def test_misspelled_option_lists_the_choices():
    with pytest.raises(ConfigCompositionException) as err:
        cfg_of("model/connector=mlp2x")
    assert "mlp2x_gelu" in str(err.value) and "qformer_lite" in str(err.value)


def test_misspelled_key_fails():
    with pytest.raises(ConfigCompositionException, match="lrr"):
        cfg_of("stage.instruct.lrr=1e-5")


@pytest.mark.parametrize(("global_batch", "micro", "world", "expected"), [
    (256, 32, 8, (32, 1)), (128, 16, 8, (16, 1)), (128, 16, 2, (16, 4)), (32, 16, 1, (16, 2)), (128, 16, 16, (8, 1)),
])
def test_micro_batching_is_derived_from_the_global_batch(global_batch, micro, world, expected):
    assert micro_batching(global_batch, micro, world) == expected
    m, acc = expected
    assert m * acc * world == global_batch


def test_global_batch_must_divide_over_devices():
    with pytest.raises(ValueError, match="not divisible"):
        micro_batching(100, 16, 3)
