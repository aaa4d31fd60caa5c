"""lmm.train.memory: the per-device training-memory estimate (hand-computed bytes for a tiny model, Vicuna-7B's shape
on the meta device), the refusal of a DDP run that cannot fit, and its place in the pipeline (before any weight)."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import CLIPVisionConfig, LlamaConfig

from lmm.model.connector import MLPConnector
from lmm.train.memory import (
    DoesNotFit,
    PartCount,
    check_training_memory,
    count_parts,
    estimate,
    meta_model,
    training_setup,
    without_memory_check,
    world_size,
)
from tests.test_config import CONF, cfg_of

BF16, FP32 = torch.bfloat16, torch.float32


# ------------------------------------------------------------------------------------------ hand-computed bytes
def tiny_configs() -> tuple[CLIPVisionConfig, LlamaConfig]:
    vision = CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                              image_size=28, patch_size=14)
    llm = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    return vision, llm


# Llama: embed 100*16; per layer q,k,v,o 4*16*16 (no bias) + gate,up,down 3*16*32 + 2 RMSNorms 2*16; final norm 16;
# lm_head 100*16 (untied).
LLM_LAYER = 4 * 16 * 16 + 3 * 16 * 32 + 2 * 16  # 2592
LLM_ROOT = 100 * 16 + 16 + 100 * 16  # 3216: embeddings, final norm, head
LLM = LLM_ROOT + 2 * LLM_LAYER  # 8400
# CLIP: embeddings = class embedding 8 + patch conv 3*14*14*8 (no bias) + positions (2*2+1)*8 (an FSDP2 block: CLIP
# lists CLIPVisionEmbeddings in _no_split_modules); pre/post LayerNorm 2*(8+8); per layer q,k,v,o 4*(8*8+8) +
# 2 LayerNorms 2*(8+8) + fc1 8*16+16 + fc2 16*8+8.
CLIP_EMBED = 8 + 3 * 14 * 14 * 8 + 5 * 8  # 4752
CLIP_LAYER = 4 * (8 * 8 + 8) + 2 * 16 + (8 * 16 + 16) + (16 * 8 + 8)  # 600
CLIP_ROOT = 2 * 16  # 32
CLIP = CLIP_EMBED + CLIP_ROOT + 2 * CLIP_LAYER  # 5984
CONNECTOR = (8 * 16 + 16) + (16 * 16 + 16)  # 416: Linear 8->16, GELU, Linear 16->16


def tiny_parts(encoder_dtype: torch.dtype = FP32) -> dict[str, PartCount]:
    vision, llm = tiny_configs()
    model = meta_model(vision, llm, partial(MLPConnector, depth=2))
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing allocated
    return count_parts(model, {"encoder": encoder_dtype})


def test_counts_of_a_tiny_model_match_the_hand_count():
    parts = tiny_parts(BF16)
    assert parts["llm"] == PartCount(LLM, FP32, LLM_LAYER, LLM_ROOT) and LLM == 8400
    assert parts["encoder"] == PartCount(CLIP, BF16, CLIP_EMBED, CLIP_ROOT) and CLIP == 5984
    assert parts["connector"] == PartCount(CONNECTOR, FP32, 0, CONNECTOR) and CONNECTOR == 416


def test_single_device_fp32_is_16_bytes_per_trainable_parameter():
    est = estimate(tiny_parts(), ["connector", "llm"], "single", 1, "32-true")
    trained = CONNECTOR + LLM
    assert est.weights == 4 * trained + 4 * CLIP  # fp32 master weights; the frozen fp32 encoder
    assert est.gradients == 4 * trained
    assert est.optimizer == 8 * trained  # AdamW: exp_avg + exp_avg_sq
    assert est.compute == 0 and est.total == 16 * trained + 4 * CLIP


def test_ddp_bf16_mixed_adds_autocast_copies_and_replicates():
    est = estimate(tiny_parts(BF16), ["connector", "llm"], "ddp", 2, "bf16-mixed")
    trained = CONNECTOR + LLM
    assert (est.weights, est.gradients, est.optimizer, est.compute) == \
        (4 * trained + 2 * CLIP, 4 * trained, 8 * trained, 2 * trained)  # nothing divided by the 2 devices
    align = estimate(tiny_parts(BF16), ["connector"], "ddp", 2, "bf16-mixed")
    assert (align.weights, align.gradients, align.optimizer, align.compute) == \
        (4 * CONNECTOR + 4 * LLM + 2 * CLIP, 4 * CONNECTOR, 8 * CONNECTOR, 2 * CONNECTOR)


def test_fsdp_divides_the_states_by_the_world_size():
    est = estimate(tiny_parts(BF16), ["connector", "llm"], "fsdp", 4, "32-true", param_dtype=BF16)
    trained = CONNECTOR + LLM
    assert est.weights == -(-(4 * trained + 2 * CLIP) // 4)
    assert est.gradients == 4 * trained // 4 and est.optimizer == 8 * trained // 4
    # gathered in bf16: the root unit (connector, LLM embeddings/norm/head, CLIP's LayerNorms) + two blocks (the
    # largest is CLIP's embeddings here)
    assert est.compute == 2 * ((CONNECTOR + LLM_ROOT + CLIP_ROOT) + 2 * CLIP_EMBED)


def test_true_half_precision_converts_everything():
    est = estimate(tiny_parts(), ["connector", "llm"], "single", 1, "bf16-true")
    trained = CONNECTOR + LLM
    assert (est.weights, est.gradients, est.optimizer, est.compute) == \
        (2 * trained + 2 * CLIP, 2 * trained, 4 * trained, 0)


# -------------------------------------------------------------------------------------------- Vicuna-7B's shape
def vicuna7b_configs() -> tuple[CLIPVisionConfig, LlamaConfig]:
    """CLIP ViT-L/14-336's vision tower and Vicuna-7B-v1.5's Llama (its config.json: fp16 weights)."""
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768)
    llm = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                      tie_word_embeddings=False)
    llm.dtype = "float16"
    return vision, llm


@pytest.fixture(scope="module")
def vicuna_parts() -> dict[str, PartCount]:
    vision, llm = vicuna7b_configs()
    model = meta_model(vision, llm, partial(MLPConnector, depth=2))
    assert all(p.device.type == "meta" for p in model.parameters())
    return count_parts(model, {"encoder": BF16, "llm": torch.float16})


def test_vicuna7b_under_ddp_needs_about_112_gb_per_device(vicuna_parts):
    assert vicuna_parts["llm"].params == 6_738_415_616  # Vicuna-7B / Llama-2-7B
    assert vicuna_parts["encoder"].params == 303_507_456  # ViT-L/14-336 vision tower
    assert vicuna_parts["connector"].params == 1024 * 4096 + 4096 + 4096 * 4096 + 4096
    est = estimate(vicuna_parts, ["connector", "llm"], "ddp", 8, "bf16-mixed", stage="instruct")
    assert est.states == pytest.approx(7e9 * 16, rel=0.05)  # 108.8 GB: fp32 weights, grads, AdamW (+ bf16 encoder)
    assert est.total == pytest.approx(est.states + 2 * (6_738_415_616 + 20_979_712))  # + autocast's bf16 copies
    assert est.total > 80e9
    fsdp = estimate(vicuna_parts, ["connector", "llm"], "fsdp", 8, "32-true", stage="instruct")
    assert fsdp.states == pytest.approx(est.states / 8, abs=8)
    assert fsdp.total < 20e9 < 80e9


def write_configs(root: Path, vision: CLIPVisionConfig, llm: LlamaConfig) -> list[str]:
    """config.json files only (no weights), as checkpoint folders; the overrides pointing the paper preset at them."""
    vision.save_pretrained(root / "clip336")
    llm.save_pretrained(root / "vicuna7b")
    return ["preset=paper", "input=res336", f"checkpoints.clip.res336={root / 'clip336'}",
            f"checkpoints.llm.vicuna7b={root / 'vicuna7b'}"]


@pytest.fixture(scope="module")
def paper(tmp_path_factory) -> list[str]:
    return write_configs(tmp_path_factory.mktemp("configs"), *vicuna7b_configs())


def test_paper_ddp_is_refused_naming_fsdp(paper):
    lines: list[str] = []
    cfg = cfg_of(*paper, "trainer=ddp", "trainer.devices=8", "trainer.memory_check.device_memory_gb=80")
    with pytest.raises(DoesNotFit) as err:
        check_training_memory(cfg, "instruct", lines.append)
    message = str(err.value)
    assert "use trainer=fsdp" in message and "~122.3 GB per device" in message and "holds 80.0 GB" in message
    assert "at least 2 devices" in message  # FSDP2 fits Vicuna-7B into 80 GB from 2 devices on (activations aside)
    assert len(lines) == 1 and "ddp, bf16-mixed, 8 devices" in lines[0] and "a device holds 80.0 GB" in lines[0]
    # the align stage trains only the connector next to the frozen fp16 LLM: it fits
    align = check_training_memory(cfg, "align", lines.append)
    assert align is not None and align.total < 20e9 and align.weights > 2 * 6.7e9


def test_paper_fsdp_over_8_devices_fits_an_80_gb_device(paper):
    lines: list[str] = []
    cfg = cfg_of(*paper, "trainer.devices=8", "trainer.memory_check.device_memory_gb=80")  # trainer=fsdp
    est = check_training_memory(cfg, "instruct", lines.append)
    assert est is not None and est.strategy == "fsdp" and est.devices == 8 and est.total < 80e9
    assert lines == [est.line() + "; a device holds 80.0 GB (trainer.memory_check.device_memory_gb)"]
    assert "fsdp, 32-true, 8 devices" in lines[0]
    with pytest.raises(DoesNotFit, match="over 1 device is not enough: use at least 2 devices"):
        check_training_memory(cfg_of(*paper, "trainer.devices=1", "trainer.memory_check.device_memory_gb=80"),
                              "instruct", lines.append)


def test_on_cpu_without_a_capacity_it_only_prints(paper):
    lines: list[str] = []
    cfg = cfg_of(*paper, "trainer=ddp", "trainer.devices=8", "trainer.accelerator=cpu")
    est = check_training_memory(cfg, "instruct", lines.append)
    assert est is not None and est.total > 100e9 and "not checked" in lines[0]
    off = cfg_of(*paper, "trainer=ddp", "trainer.devices=8", "trainer.memory_check.device_memory_gb=80",
                 "trainer.memory_check.enabled=false")
    assert check_training_memory(off, "instruct", lines.append) is None and "check off" in lines[-1]
    missing = cfg_of(*paper, "checkpoints.llm.vicuna7b=/nonexistent/vicuna", "trainer.memory_check.device_memory_gb=1")
    assert check_training_memory(missing, "instruct", lines.append) is None and "no estimate" in lines[-1]


def test_setup_reads_dtypes_strategy_and_devices_from_the_config(paper):
    setup = training_setup(cfg_of(*paper, "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"), "align")
    assert (setup.strategy, setup.devices, setup.precision, setup.trainable) == ("ddp", 8, "bf16-mixed",
                                                                                   ["connector"])
    assert setup.parts["encoder"].dtype == BF16  # model.encoder.dtype of the paper preset
    assert setup.parts["llm"].dtype == torch.float16  # the checkpoint's config.json (transformers' dtype="auto")
    assert training_setup(cfg_of(*paper, "trainer=default"), "align").strategy == "single"


@pytest.mark.parametrize(("trainer", "expected"), [
    ({"devices": 2, "num_nodes": 3}, 6), ({"devices": [0, 1, 2]}, 3), ({"devices": "0,1"}, 2),
    ({"devices": "auto", "accelerator": "cpu"}, 1), ({"devices": "4"}, 4),
])
def test_world_size(trainer, expected):
    assert world_size(OmegaConf.create(trainer)) == expected


def test_trainer_config_without_the_check_resolves_and_builds():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["preset=paper", "trainer=ddp"])  # unresolved, as in run.py
    assert "memory_check" in cfg.trainer
    plain = without_memory_check(cfg.trainer)
    assert "memory_check" not in plain and plain.precision == "bf16-mixed"  # ${lmm_bf16_precision:${sharding}}
    trainer = instantiate(without_memory_check(cfg_of("trainer.accelerator=cpu").trainer), logger=False)
    assert trainer.world_size == 1


# ------------------------------------------------------------------------------------------------- the pipeline
def test_pipeline_refuses_before_loading_anything(paper, tmp_path, monkeypatch):
    import lmm.train.stage as stage

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was built before the memory check")

    monkeypatch.setattr(stage, "build_model", no_loading)
    monkeypatch.setattr(stage, "instantiate", no_loading)  # nor the tokenizer, the Trainer or the data
    cfg = cfg_of(*paper, "trainer=ddp", "trainer.devices=8", "trainer.memory_check.device_memory_gb=80",
                 f"paths.output_dir={tmp_path}")
    with pytest.raises(DoesNotFit, match="trainer=fsdp"):
        stage.train_stage(cfg, "instruct", tmp_path / "instruct", tmp_path, None)


def test_run_py_exits_with_the_refusal(paper, tmp_path):
    env = dict(os.environ, LMM_OUTPUT_DIR=str(tmp_path / "out"), LMM_CACHE_DIR=str(tmp_path / "cache"),
               WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "run.py", *paper, "trainer=ddp", "trainer.devices=8",
                           "trainer.memory_check.device_memory_gb=80", "logger=none", "stages=[instruct]",
                           "stage.instruct.init_connector_from=random"], cwd=CONF.parent, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "memory instruct: ~122.3 GB per device" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith("lmm: the instruct stage needs ~122.3 GB per device")
    assert "use trainer=fsdp" in proc.stderr and "Traceback" not in proc.stderr
