"""The loggers of a run: a CSV file per stage, and one W&B run for the whole lmm run (both stages and the evaluation).

W&B works with no account and no network: offline unless a key is configured, its files inside the run folder, and
finished (nothing left running) when the run ends.
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from lmm.config import to_plain
from lmm.log import log


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


def _preset() -> str | None:
    """The preset the job was composed with (Hydra knows it; a config composed outside Hydra does not say)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get("preset") if HydraConfig.initialized() else None


def wandb_identity(cfg: DictConfig, run_dir: Path, group: str | None = None, tags: list[str] | None = None,
                   preset: str | None = None) -> dict:
    """Name, group and tags of the W&B run. A rung of the ablation ladder (`+ablation=<rung>`) is named
    `<rung>-seed<seed>`, grouped by rung and tagged with rung, seed and preset, so W&B compares rungs over seeds;
    any other run is named by its folder. The W&B id stays the folder's name, which is unique."""
    rung = OmegaConf.select(cfg, "ablation.name")
    tags = list(tags or [])
    if not rung:
        return {"name": run_dir.name, "group": group, "tags": tags}
    seed = OmegaConf.select(cfg, "seed")
    extra = [str(rung), f"seed{seed}", *([preset] if preset else [])]
    tags += [t for t in extra if t not in tags]
    return {"name": f"{rung}-seed{seed}", "group": group or str(rung), "tags": tags}


def _wandb_logger(cfg: DictConfig, spec: DictConfig, run_dir: Path) -> WandbLogger:
    key = str(run_dir)
    if key not in _WANDB:
        configure_wandb_env(run_dir)
        kwargs = to_plain(spec)
        cls = get_class(kwargs.pop("_target_"))  # not instantiate(): its own first parameter is named `config`
        kwargs.update(wandb_identity(cfg, run_dir, kwargs.pop("group", None), kwargs.pop("tags", None), _preset()))
        logger = cls(**kwargs, save_dir=str(run_dir), id=run_dir.name, resume="allow", config=to_plain(cfg))
        # Lightning always passes `anonymous` to wandb.init, which W&B answers with a deprecation warning on every
        # run; lmm never uses it, so the key is dropped where Lightning keeps its init arguments.
        logger._wandb_init.pop("anonymous", None)
        _WANDB[key] = logger
    return _WANDB[key]


def log_run_config(cfg: DictConfig, run_dir: Path, values: dict) -> None:
    """Add `values` to the W&B run's config (e.g. which align stage the run used), if the run logs to W&B."""
    for spec in cfg.logger or []:
        if spec["_target_"].endswith("WandbLogger"):
            _wandb_logger(cfg, spec, run_dir).log_hyperparams(values)


def finish_wandb(run_dir: Path) -> None:
    logger = _WANDB.pop(str(run_dir), None)
    if logger is None or logger._experiment is None:
        return
    import wandb

    run = logger.experiment
    where = run.dir if os.environ.get("WANDB_MODE") == "offline" else run.url
    wandb.finish()
    if os.environ.get("WANDB_MODE") == "offline":
        log.info(f"W&B run (offline): {Path(where).parent}  — upload with: wandb sync {Path(where).parent}")
    else:
        log.info(f"W&B run: {where}")


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
