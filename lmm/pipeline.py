"""align → instruct → eval: each link reads its inputs (config + the previous link's output) and writes its run folder.

Run folder (`paths.output_dir/runs/<run_id>/`): config.yaml (resolved), meta.json (git commit, versions, command),
align → the align stage it used, instruct/ (checkpoints, final model), samples/, results.json, wandb/.
The align stage lives in `paths.output_dir/stages/align-<fingerprint>/`, keyed by everything it depends on, so the
rungs of an ablation ladder that share an align stage train it once. Only run.py imports this module.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict
from transformers.utils import logging as hf_logging

from lmm.config import RANDOM_CONNECTOR, fingerprint, new_run_id, validate
from lmm.log import is_global_zero, log, quiet_third_party
from lmm.provenance import provenance
from lmm.summary import format_run_summary
from lmm.train.loggers import finish_wandb, log_run_config, make_loggers
from lmm.train.stage import close_process_group, stage_lock, train_stage

# everything an align stage depends on; `prepare` builds the tiny world its data and backbones come from
ALIGN_KEYS = ["model.encoder", "model.connector", "model.llm", "model.tokenizer", "model.max_length", "input",
              "data.align", "stage.align", "seed", "trainer.precision", "sharding", "prepare"]


# what changes how an align stage runs but not what it computes: loader workers, where caches live
ALIGN_RUNTIME_KEYS = ["data.align.loader.num_workers", "data.align.store"]


def align_fingerprint(cfg: DictConfig) -> str:
    """The align stage's cache key. High-resolution input (input=hd/anyres) tiles only in the instruct stage, so its
    align stage is that of its tower's resolution (`input.tower`): +ablation=anyres reuses res336's, as the paper
    reuses the stage-1 projector. Runtime settings (ALIGN_RUNTIME_KEYS) and options left null are not part of it, so
    more loader workers, another cache folder or a new option added with a null default reuse the stage."""
    view = cfg.copy()
    tower = OmegaConf.select(cfg, "input.tower")
    with open_dict(view):
        if tower is not None:
            view.input = {"name": tower}
        for key in ALIGN_RUNTIME_KEYS:
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(view, parent)
            if node is not None and leaf in node:
                del node[leaf]
    return fingerprint(view, ALIGN_KEYS)


# ------------------------------------------------------------------------------------------------------ run folder
def run_dir_of(cfg: DictConfig) -> Path:
    """Hydra's output folder for this job (the same in every DDP process), or a fresh one outside Hydra."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir).resolve()
    return (Path(cfg.paths.output_dir) / "runs" / new_run_id(cfg.get("run_id"))).resolve()


def write_meta(cfg: DictConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    meta = {"run_id": run_dir.name, "command": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **provenance()}
    (run_dir / "meta.json").write_text(json.dumps(meta, indent=2))


def eval_stage(cfg: DictConfig, run_dir: Path, checkpoint: str | Path) -> dict:
    """Evaluate a saved model (lmm run/model folder or Hugging Face Llava folder) on the suite `cfg.eval`."""
    from lmm.eval.runner import evaluate
    from lmm.model.io import load_checkpoint

    loaded = load_checkpoint(checkpoint, dtype=OmegaConf.select(cfg, "eval.dtype"))  # loaded in it, not cast later
    loggers = [lg for lg in make_loggers(cfg, run_dir, "eval") if isinstance(lg, WandbLogger)]
    return evaluate(cfg, loaded.model, loaded.tokenizer, run_dir, loggers=loggers,
                    image_processor=loaded.image_processor, model_id=loaded.model_id)


# ------------------------------------------------------------------------------------------------------------- run
def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole job described by `cfg`; returns what it wrote into results.json."""
    validate(cfg)  # before anything is built, downloaded or loaded
    quiet_third_party()
    run_dir = run_dir_of(cfg)
    if is_global_zero():
        write_meta(cfg, run_dir)
    hf_logging.disable_progress_bar()  # weight-loading bars, once per stage, drown the training log
    for step in cfg.prepare or []:
        instantiate(step)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    log.info(f"run folder: {run_dir}")
    if not cfg.get("run_id"):
        log.info(f"to resume this run after a stop, run the same command with run_id={run_dir.name}")
    results: dict[str, Any] = {"run_id": run_dir.name, "stages": {}}
    try:
        if cfg.task == "train":
            init_connector = None
            if "align" in cfg.stages:
                key = align_fingerprint(cfg)
                align_dir = (Path(cfg.paths.output_dir) / "stages" / f"align-{key}").resolve() if cfg.reuse_align \
                    else run_dir / "align"
                with stage_lock(align_dir):
                    reused = (align_dir / "stage.json").exists()  # finished before this run got here
                    summary = train_stage(cfg, "align", align_dir, run_dir, cfg.stage.align.get("init_connector_from"))
                # which align stage this run used, and whether another run (or an earlier attempt) trained it
                used = {"dir": str(align_dir), "fingerprint": key, "reused": reused}
                results["stages"]["align"] = {**summary, "fingerprint": key, "reused": reused}
                log_run_config(cfg, run_dir, {"align_stage": used})
                link = run_dir / "align"
                if cfg.reuse_align and not link.is_symlink() and not link.exists():
                    with contextlib.suppress(FileExistsError):  # every rank of a distributed job gets here
                        link.symlink_to(align_dir, target_is_directory=True)
                init_connector = summary["connector"]
            if "instruct" in cfg.stages:
                init = cfg.stage.instruct.get("init_connector_from") or init_connector
                if init == RANDOM_CONNECTOR:
                    log.info("instruct: starting from a random connector (stage.instruct.init_connector_from=random)")
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
    if summary := format_run_summary(results):
        log.info(f"summary of {run_dir.name}:\n{summary}")
    log.info(f"done: {run_dir / 'results.json'}")
    close_process_group()
    return results


