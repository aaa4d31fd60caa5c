"""align → instruct → eval: each link reads its inputs (config + the previous link's output) and writes its run folder.

Run folder (`paths.output_dir/runs/<run_id>/`): config.yaml (resolved), meta.json (git commit, versions, command),
align → the align stage it used, instruct/ (checkpoints, final model), samples/, results.json, wandb/.
The align stage lives in `paths.output_dir/stages/align-<fingerprint>/`, keyed by everything it depends on, so the
rungs of an ablation ladder that share an align stage train it once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from transformers.utils import logging as hf_logging

from lmm.config import RANDOM_CONNECTOR, fingerprint, new_run_id, validate
from lmm.data.images import ImageTransform
from lmm.model.llava import LlavaModel
from lmm.train.accounting import DataAccounting
from lmm.train.callbacks import LossRecord, SampleGenerations, Throughput, TrainedTally
from lmm.train.memory import check_training_memory, without_memory_check
from lmm.train.module import LlavaLitModule

# everything an align stage depends on; `prepare` builds the tiny world its data and backbones come from
ALIGN_KEYS = ["model.encoder", "model.connector", "model.llm", "model.max_length", "input", "data.align",
              "stage.align", "seed", "trainer.precision", "sharding", "prepare"]


def is_global_zero() -> bool:
    """Rank 0 of the whole job, also before the Trainer exists (from RANK / SLURM_PROCID / LOCAL_RANK)."""
    return rank_zero_only.rank == 0


def log(msg: str) -> None:
    if is_global_zero():
        print(f"[lmm] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------------ run folder
def run_dir_of(cfg: DictConfig) -> Path:
    """Hydra's output folder for this job (the same in every DDP process), or a fresh one outside Hydra."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir).resolve()
    return (Path(cfg.paths.output_dir) / "runs" / new_run_id(cfg.get("run_id"))).resolve()


def write_meta(cfg: DictConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    import lightning
    import transformers

    def git(*args: str) -> str | None:
        with contextlib.suppress(Exception):
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                                  cwd=Path(__file__).parent).stdout.strip()
        return None

    meta = {"run_id": run_dir.name, "command": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain")),
            "python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
            "transformers": transformers.__version__, "host": platform.node()}
    (run_dir / "meta.json").write_text(json.dumps(meta, indent=2))


def configure_wandb_env(run_dir: Path) -> str:
    """Offline unless a W&B key is configured (or WANDB_MODE says otherwise); keep W&B's files in the run folder."""
    if "WANDB_MODE" not in os.environ:
        has_key = bool(os.environ.get("WANDB_API_KEY"))
        netrc = Path.home() / ".netrc"
        has_key = has_key or (netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"))
        os.environ["WANDB_MODE"] = "online" if has_key else "offline"
    for var, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", "wandb-cache"), ("WANDB_CONFIG_DIR", "wandb-config"),
                     ("WANDB_DATA_DIR", "wandb-data")):
        os.environ.setdefault(var, str(run_dir / sub))
    os.environ.setdefault("WANDB_SILENT", "true")
    return os.environ["WANDB_MODE"]


def make_loggers(cfg: DictConfig, run_dir: Path, stage: str) -> list[Logger]:
    """The configured loggers for one stage: CSV per stage folder, one W&B run for the whole lmm run."""
    loggers: list[Logger] = []
    for spec in cfg.logger or []:
        target = spec["_target_"]
        if target.endswith("CSVLogger"):
            loggers.append(instantiate(spec, save_dir=str(run_dir / "logs"), name=stage, version=""))
        elif target.endswith("WandbLogger"):
            loggers.append(_wandb_logger(cfg, spec, run_dir))
        else:
            loggers.append(instantiate(spec))
    return loggers


_WANDB: dict[str, WandbLogger] = {}


def _wandb_logger(cfg: DictConfig, spec: DictConfig, run_dir: Path) -> WandbLogger:
    key = str(run_dir)
    if key not in _WANDB:
        configure_wandb_env(run_dir)
        kwargs = OmegaConf.to_container(spec, resolve=True)
        cls = get_class(kwargs.pop("_target_"))  # not instantiate(): its own first parameter is named `config`
        _WANDB[key] = cls(**kwargs, save_dir=str(run_dir), name=run_dir.name, id=run_dir.name, resume="allow",
                          config=OmegaConf.to_container(cfg, resolve=True))
    return _WANDB[key]


def finish_wandb(run_dir: Path) -> None:
    logger = _WANDB.pop(str(run_dir), None)
    if logger is None or logger._experiment is None:
        return
    import wandb

    run = logger.experiment
    where = run.dir if os.environ.get("WANDB_MODE") == "offline" else run.url
    wandb.finish()
    if os.environ.get("WANDB_MODE") == "offline":
        log(f"W&B run (offline): {Path(where).parent}  — upload with: wandb sync {Path(where).parent}")
    else:
        log(f"W&B run: {where}")


# ------------------------------------------------------------------------------------------------------- building
def build_model(cfg: DictConfig) -> LlavaModel:
    """Instantiate encoder, connector and LLM from config through their from_pretrained paths."""
    encoder = instantiate(cfg.model.encoder)
    connector = instantiate(cfg.model.connector)
    llm = instantiate(cfg.model.llm)
    return LlavaModel(encoder, connector, llm, max_length=cfg.model.max_length)


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


# ---------------------------------------------------------------------------------------------------------- stages
def train_stage(cfg: DictConfig, name: str, stage_dir: Path, run_dir: Path, init_connector: str | None) -> dict:
    """Train one stage into `stage_dir` (resuming from its last checkpoint) and return its summary."""
    scfg = cfg.stage[name]
    done = stage_dir / "stage.json"
    if done.exists():
        log(f"{name}: already trained in {stage_dir}, reusing it")
        return json.loads(done.read_text())
    check_training_memory(cfg, name, log)  # from the configs, before the weights load: a run that cannot fit stops
    tokenizer = instantiate(cfg.model.tokenizer)
    model = build_model(cfg)
    template = instantiate(scfg.template)
    transform = ImageTransform.from_pretrained(cfg.model.encoder.pretrained, aspect=scfg.image_aspect)
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
        Throughput(name, model.num_visual_tokens, every_n_steps=cfg.trainer.get("log_every_n_steps", 5)),
        DataAccounting(name, log_every_n_steps=cfg.trainer.get("log_every_n_steps", 5))]
    if loggers:  # logger=none: Lightning refuses a learning-rate monitor without a logger
        callbacks.append(LearningRateMonitor(logging_interval="step"))
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
    log(f"{name}: global batch {scfg.global_batch_size} = {micro} per device x {trainer.world_size} devices x "
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
    return json.loads(done.read_text())


def log_stage_artifact(loggers: list[Logger], run_dir: Path, stage_dir: Path, name: str) -> None:
    """Put the stage's checkpoint and outputs (connector; after instruct the whole model folder) into the W&B run as
    a model artifact, so the W&B run holds what the run folder holds. Off under preset=paper (7B checkpoints)."""
    import wandb

    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        artifact = wandb.Artifact(f"{run_dir.name}-{name}", type="model",
                                  metadata={"stage": name, "dir": str(stage_dir)})
        last = stage_dir / "checkpoints" / "last.ckpt"
        if last.is_dir():  # a sharded (DCP) checkpoint
            artifact.add_dir(str(last), name="checkpoints/last.ckpt")
        elif last.exists():
            artifact.add_file(str(last), name="checkpoints/last.ckpt")
        for file in ("connector.safetensors", "stage.json"):
            if (stage_dir / file).exists():
                artifact.add_file(str(stage_dir / file), name=file)
        if (stage_dir / "model").is_dir():
            artifact.add_dir(str(stage_dir / "model"), name="model")
        logger.experiment.log_artifact(artifact, aliases=[name, "latest"])


def save_stage_outputs(module: LlavaLitModule, stage_dir: Path, tokenizer: Any, cfg: DictConfig, name: str,
                       image_transform: ImageTransform) -> None:
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
    save_lmm_model(state, module.model, stage_dir, tokenizer=tokenizer, config=cfg, image_transform=image_transform,
                   stage=name,
                   connector_only=(name == "align"))


def eval_stage(cfg: DictConfig, run_dir: Path, checkpoint: str | Path) -> dict:
    """Evaluate a saved model (lmm run/model folder or Hugging Face Llava folder) on the suite `cfg.eval`."""
    from lmm.eval.runner import evaluate, load_checkpoint

    loaded = load_checkpoint(checkpoint, dtype=OmegaConf.select(cfg, "eval.dtype"))  # loaded in it, not cast later
    loggers = [lg for lg in make_loggers(cfg, run_dir, "eval") if isinstance(lg, WandbLogger)]
    return evaluate(cfg, loaded.model, loaded.tokenizer, run_dir, loggers=loggers,
                    image_processor=loaded.image_processor, model_id=loaded.model_id)


# ------------------------------------------------------------------------------------------------------------- run
def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole job described by `cfg`; returns what it wrote into results.json."""
    validate(cfg)  # before anything is built, downloaded or loaded
    run_dir = run_dir_of(cfg)
    if is_global_zero():
        write_meta(cfg, run_dir)
    hf_logging.disable_progress_bar()  # weight-loading bars, once per stage, drown the training log
    for step in cfg.prepare or []:
        instantiate(step)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    log(f"run folder: {run_dir}")
    if not cfg.get("run_id"):
        log(f"to resume this run after a stop, run the same command with run_id={run_dir.name}")
    results: dict[str, Any] = {"run_id": run_dir.name, "stages": {}}
    try:
        if cfg.task == "train":
            init_connector = None
            if "align" in cfg.stages:
                key = fingerprint(cfg, ALIGN_KEYS)
                align_dir = (Path(cfg.paths.output_dir) / "stages" / f"align-{key}").resolve() if cfg.reuse_align \
                    else run_dir / "align"
                with stage_lock(align_dir):
                    summary = train_stage(cfg, "align", align_dir, run_dir, cfg.stage.align.get("init_connector_from"))
                results["stages"]["align"] = summary
                link = run_dir / "align"
                if cfg.reuse_align and not link.is_symlink() and not link.exists():
                    with contextlib.suppress(FileExistsError):  # every rank of a distributed job gets here
                        link.symlink_to(align_dir, target_is_directory=True)
                init_connector = summary["connector"]
            if "instruct" in cfg.stages:
                init = cfg.stage.instruct.get("init_connector_from") or init_connector
                if init == RANDOM_CONNECTOR:
                    log("instruct: starting from a random connector (stage.instruct.init_connector_from=random)")
                    init = None
                results["stages"]["instruct"] = train_stage(cfg, "instruct", run_dir / "instruct", run_dir, init)
                if cfg.get("eval") and cfg.eval.get("benchmarks"):
                    results["eval"] = eval_stage(cfg, run_dir, results["stages"]["instruct"]["model"])
        else:  # task=eval (validate() allows nothing else)
            results["eval"] = eval_stage(cfg, run_dir, cfg.checkpoint)
        if is_global_zero():
            (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    finally:
        finish_wandb(run_dir)
    log(f"done: {run_dir / 'results.json'}")
    close_process_group()
    return results


def close_process_group() -> None:
    """End the job's process group once every rank is done (Lightning leaves it open).

    Left to interpreter shutdown, gloo's worker threads are torn down in an unspecified order, and the process can
    abort ("terminate called without an active exception") after all its work succeeded.
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
