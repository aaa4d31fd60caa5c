"""Every config group option composes and resolves under both presets; mistakes fail early and clearly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from lmm.config import ConfigError, register_resolvers, validate
from lmm.train.stage import micro_batching

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
    """input=res336 picks the same encoder family at its higher resolution, at both scales."""
    paper = {"clip": ("openai/clip-vit-large-patch14", "openai/clip-vit-large-patch14-336"),
             "siglip": ("google/siglip-base-patch16-224", "google/siglip-base-patch16-384")}
    for encoder, expected in paper.items():
        got = tuple(cfg_of("preset=paper", f"model/encoder={encoder}", f"input={res}").model.encoder.pretrained
                    for res in ("res224", "res336"))
        assert got == expected
        tiny = [cfg_of(f"model/encoder={encoder}", f"input={res}").model.encoder.pretrained
                for res in ("res224", "res336")]
        assert [Path(p).name for p in tiny] == [f"{encoder}-tiny-res224", f"{encoder}-tiny-res336"]


def test_paper_preset_trains_in_bf16_with_any_strategy():
    assert cfg_of("preset=paper").trainer.precision == "32-true"  # FSDP2's MixedPrecisionPolicy computes in bf16
    assert cfg_of("preset=paper").sharding.param_dtype == "bfloat16"
    for trainer in ("ddp", "default"):
        assert cfg_of("preset=paper", f"trainer={trainer}").trainer.precision == "bf16-mixed"
    assert cfg_of("trainer=ddp").trainer.precision == "32-true"  # the tiny preset stays fp32 on CPU


def test_paper_preset_evaluates_in_float16_as_llava():
    """The trained weights are fp32 master copies: without eval.dtype the paper preset would evaluate in fp32."""
    assert cfg_of("preset=paper").eval.dtype == "float16"
    assert cfg_of("preset=paper", "eval=paper12").eval.dtype == "float16"  # whichever suite
    assert cfg_of("preset=paper", "trainer=ddp").eval.dtype == "float16"
    assert cfg_of("preset=paper", "eval.dtype=bfloat16").eval.dtype == "bfloat16"
    assert cfg_of().eval.dtype is None  # the tiny preset evaluates its fp32 CPU models as they are


def test_cli_override_wins_over_preset():
    cfg = cfg_of("preset=paper", "trainer=ddp", "stage.instruct.lr=1e-5")
    assert cfg.trainer.strategy._target_.endswith("DDPStrategy") and cfg.stage.instruct.lr == 1e-5


def test_misspelled_option_lists_the_choices():
    with pytest.raises(ConfigCompositionException) as err:
        cfg_of("model/connector=mlp2x")
    assert "mlp2x_gelu" in str(err.value) and "qformer_lite" in str(err.value)


@pytest.mark.parametrize(("override", "names"), [
    ("stage.align.image_aspect=padd", ["pad", "crop"]),
    ("task=evall", ["train", "eval"]),
    ("stages=[algn,instruct]", ["align", "instruct"]),
    ("stage.instruct.train=[connecter,llm]", ["encoder", "connector", "llm"]),
    ("model.encoder.select_feature=cls", ["patch", "cls_patch"]),
    ("data.instruct.policy.on_error=ignore", ["error", "skip"]),
    ("stage.instruct.loss_normalization=per_sample", ["global_tokens", "llava"]),
])
def test_misspelled_value_lists_the_choices(override, names):
    with pytest.raises(ConfigError) as err:
        validate(cfg_of(override))
    assert all(name in str(err.value) for name in names), str(err.value)


def test_instruct_alone_needs_an_explicit_connector():
    with pytest.raises(ConfigError, match="init_connector_from"):
        validate(cfg_of("stages=[instruct]"))
    validate(cfg_of("stages=[instruct]", "stage.instruct.init_connector_from=random"))
    validate(cfg_of("stages=[instruct]", "stage.instruct.init_connector_from=/runs/a/align/connector.safetensors"))
    with pytest.raises(ConfigError, match="align before instruct"):
        validate(cfg_of("stages=[instruct,align]"))
    with pytest.raises(ConfigError, match="checkpoint"):
        validate(cfg_of("task=eval"))


def test_misspelled_value_fails_before_anything_is_built(tmp_path):
    """Through run.py: the error names the key and the choices, and the tiny world was not built first."""
    env = dict(os.environ, LMM_OUTPUT_DIR=str(tmp_path / "out"), LMM_CACHE_DIR=str(tmp_path / "cache"),
               WANDB_MODE="disabled")
    proc = subprocess.run([sys.executable, "run.py", "stage.instruct.image_aspect=squash"], cwd=CONF.parent, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "stage.instruct.image_aspect='squash'" in proc.stderr and "pad, crop" in proc.stderr
    assert not (tmp_path / "cache").exists()


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


def test_callbacks_group_gives_each_stage_its_callbacks():
    from lightning.pytorch.callbacks import LearningRateMonitor, Timer

    from lmm.train.accounting import DataAccounting
    from lmm.train.callbacks import Throughput
    from lmm.train.stage import configured_callbacks

    made = configured_callbacks(cfg_of(), "instruct", with_logger=True)
    assert [type(c) for c in made] == [Throughput, DataAccounting, LearningRateMonitor]
    assert made[0].stage == made[1].stage == "instruct" and made[0].every == 5  # trainer.log_every_n_steps
    assert [type(c) for c in configured_callbacks(cfg_of(), "align", with_logger=False)] == [Throughput, DataAccounting]
    changed = cfg_of("~callbacks.throughput", "+callbacks.timer._target_=lightning.pytorch.callbacks.Timer")
    assert [type(c) for c in configured_callbacks(changed, "align", with_logger=True)] == \
        [DataAccounting, LearningRateMonitor, Timer]
