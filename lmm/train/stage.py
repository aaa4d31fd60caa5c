"""One training stage (align or instruct) from config to its folder: model, data, Trainer, checkpoints, outputs.

A stage folder holds checkpoints/last.ckpt (trainable weights, optimizer, scheduler, data position), the connector,
after instruct the whole model (Hugging Face folders), and stage.json, written last: a folder with stage.json is a
finished stage that any run with the same fingerprint reuses.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from lmm.log import log
from lmm.model.build import build_llava, input_tiling, tile_model
from lmm.model.llava import LlavaModel
from lmm.model.preprocess import ImageTransform
from lmm.model.tiles import TiledTransform
from lmm.train.callbacks import LossRecord, SampleGenerations, TrainedTally
from lmm.train.loggers import log_stage_artifact, make_loggers
from lmm.train.memory import check_training_memory, without_memory_check
from lmm.train.module import LlavaLitModule


def build_model(cfg: DictConfig, stage: str | None = None) -> LlavaModel:
    """Instantiate encoder, connector and LLM from config through their from_pretrained paths.

    With high-resolution input (`input.tiling`, spec §6) every stage but align takes tiles: the align stage trains
    the plain connector on single images, as the paper does (its connector is then reused, no extra pretraining).
    """
    model = build_llava(cfg.model.encoder, cfg.model.connector, cfg.model.llm, max_length=cfg.model.max_length)
    tiling = input_tiling(OmegaConf.to_container(cfg.input, resolve=True) if cfg.get("input") else None)
    if tiling is not None and stage != "align":
        tile_model(model, tiling)
    return model


def micro_batching(global_batch: int, micro_batch: int, world_size: int) -> tuple[int, int]:
    """(micro-batch per device, accumulation steps) that make up exactly `global_batch` samples per step."""
    if global_batch % world_size:
        raise ValueError(f"global_batch_size={global_batch} is not divisible by the {world_size} devices")
    per_device = global_batch // world_size
    micro = min(micro_batch, per_device)
    while per_device % micro:
        micro -= 1
    return micro, per_device // micro


@contextlib.contextmanager
def stage_lock(stage_dir: Path):
    """One process at a time trains a shared stage (parallel sweep jobs wait for the first one)."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("LOCAL_RANK", "0")) > 0:
        yield  # inside one distributed job the ranks train the stage together
        return
    with open(stage_dir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def configured_callbacks(cfg: DictConfig, stage: str, with_logger: bool) -> list[L.Callback]:
    """The `callbacks` group's callbacks for one stage (a partial one gets `stage=`); a learning-rate monitor only
    with a logger (Lightning refuses it without one)."""
    out = []
    for spec in (cfg.get("callbacks") or {}).values():
        callback = instantiate(spec)
        if isinstance(callback, functools.partial):
            callback = callback(stage=stage)
        if isinstance(callback, LearningRateMonitor) and not with_logger:
            continue
        out.append(callback)
    return out


def train_stage(cfg: DictConfig, name: str, stage_dir: Path, run_dir: Path, init_connector: str | None) -> dict:
    """Train one stage into `stage_dir` (resuming from its last checkpoint) and return its summary."""
    scfg = cfg.stage[name]
    done = stage_dir / "stage.json"
    if done.exists():
        log.info(f"{name}: already trained in {stage_dir}, reusing it")
        return read_summary(stage_dir)
    check_training_memory(cfg, name, log.info)  # from the configs, before the weights load: a run that cannot fit stops
    tokenizer = instantiate(cfg.model.tokenizer)
    model = build_model(cfg, name)
    template = instantiate(scfg.template)
    transform = model.image_transform(scfg.image_aspect)
    module = LlavaLitModule(model, train=list(scfg.train), lr=scfg.lr, weight_decay=scfg.weight_decay,
                            warmup_ratio=scfg.warmup_ratio, init_connector_from=init_connector or None,
                            gradient_checkpointing=scfg.gradient_checkpointing, stage_name=name,
                            loss_normalization=scfg.loss_normalization,
                            fsdp=instantiate(cfg.sharding) if cfg.get("sharding") else None)
    loss_record = LossRecord(f"{name}/loss")
    tally = TrainedTally(name)  # in the constructor's list: Lightning then runs it before ModelCheckpoint saves
    loggers = make_loggers(cfg, run_dir, name)
    callbacks: list[L.Callback] = [
        ModelCheckpoint(dirpath=stage_dir / "checkpoints", every_n_train_steps=scfg.checkpoint_every_n_steps,
                        save_top_k=0, save_last=True), loss_record, tally,
        *configured_callbacks(cfg, name, with_logger=bool(loggers))]
    trainer: L.Trainer = instantiate(without_memory_check(cfg.trainer), max_epochs=scfg.max_epochs,
                                     max_steps=scfg.max_steps, callbacks=callbacks, logger=loggers or False,
                                     default_root_dir=str(stage_dir))
    micro, accumulate = micro_batching(scfg.global_batch_size, scfg.micro_batch_size, trainer.world_size)
    trainer.accumulate_grad_batches = accumulate
    datamodule = instantiate(cfg.data[name])(template=template, tokenizer=tokenizer, image_transform=transform,
                                             max_text_length=model.max_length - model.num_visual_tokens + 1,
                                             micro_batch_size=micro, seed=cfg.seed, output_dir=str(stage_dir),
                                             visual_tokens=model.num_visual_tokens)
    if cfg.num_sample_generations:
        trainer.callbacks.append(SampleGenerations(datamodule.example_records(cfg.num_sample_generations), template,
                                                   tokenizer, transform, run_dir / "samples" / f"{name}.jsonl", name))
    last = stage_dir / "checkpoints" / "last.ckpt"
    resume = str(last) if last.exists() else None
    log.info(f"{name}: global batch {scfg.global_batch_size} = {micro} per device x {trainer.world_size} devices x "
        f"{accumulate} accumulation; {'resuming from ' + resume if resume else 'from scratch'}")
    started = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    summary = {"stage": name, "dir": str(stage_dir), "global_step": trainer.global_step,
               "seconds": round(time.time() - started, 1), "micro_batch_size": micro,
               "accumulate_grad_batches": accumulate, "world_size": trainer.world_size,
               "resumed_from": resume, "start_step": loss_record.start_step,
               "losses": loss_record.losses, "trained": tally.summary(), **module.parameter_counts()}
    save_stage_outputs(module, stage_dir, tokenizer, cfg, name, transform)
    if trainer.is_global_zero:
        summary["connector"] = str(stage_dir / "connector.safetensors")
        summary["model"] = str(stage_dir / "model") if name != "align" else None
        done.write_text(json.dumps(summary, indent=2))
        if cfg.get("wandb_artifacts"):
            log_stage_artifact(loggers, run_dir, stage_dir, name)
    trainer.strategy.barrier()
    return read_summary(stage_dir)


def read_summary(stage_dir: Path) -> dict:
    """A finished stage's stage.json, its paths (written absolute) re-rooted at `stage_dir`: an outputs folder moved
    or copied (another disk, a clone, another machine) is reused from where it is, not from where it was trained."""
    summary = json.loads((stage_dir / "stage.json").read_text())
    old = summary.get("dir")
    if not old or Path(old) == stage_dir:
        return summary

    def moved(value: Any) -> Any:
        if isinstance(value, str) and (value == old or value.startswith(old + "/")):
            return str(stage_dir) + value[len(old):]
        return value

    return {k: moved(v) for k, v in summary.items()}


def save_stage_outputs(module: LlavaLitModule, stage_dir: Path, tokenizer: Any, cfg: DictConfig, name: str,
                       image_transform: ImageTransform | TiledTransform) -> None:
    """Write the connector (always) and, after instruct, the whole model in Hugging Face folders, with the image
    preprocessing the stage trained with."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from lmm.model.io import save_lmm_model

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(module.model, options=options) if distributed else \
        {k: v.detach().cpu() for k, v in module.model.state_dict().items()}
    if distributed and torch.distributed.get_rank() != 0:
        return
    image_transform = getattr(image_transform, "base", image_transform)  # tiled: the tile's own preprocessing
    save_lmm_model(state, module.model, stage_dir, tokenizer=tokenizer, config=cfg, image_transform=image_transform,
                   stage=name,
                   connector_only=(name == "align"))


def close_process_group() -> None:
    """End the job's process group once every rank is done (Lightning leaves it open).

    Left to interpreter shutdown, gloo's worker threads are torn down in an unspecified order, and the process can
    abort ("terminate called without an active exception") after all its work succeeded.
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
