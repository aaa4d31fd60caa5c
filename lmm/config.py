"""Config helpers: OmegaConf resolvers, validation before anything heavy starts, and the stage cache key."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmm.constants import ASPECTS, LOSS_NORMALIZATIONS, ON_ERROR, PARTS, SELECT_FEATURES, TILINGS, VERIFY_IMAGES


def new_run_id(name: str | None = None, prefix: str | None = None) -> str:
    """A run id that never collides: the given name, or the time plus random hex (not a timestamp alone), after
    `prefix` when one is given (an ablation rung names its runs `<rung>-seed<seed>-...`, so they sort by rung)."""
    if name:
        return str(name)
    stamp = shared_launch_id() or time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(4)
    return f"{prefix}-{stamp}" if prefix else stamp


def shared_launch_id() -> str | None:
    """The id that all processes of one multi-process launch share, where each process composes the config and so
    names the run folder itself: the tasks of one SLURM job step (`srun`, hydra-submitit-launcher with
    tasks_per_node > 1) and torchrun's workers. Their folder must be one, so it is named by the job, not by time +
    random (which differs per process); SLURM job ids and torchrun's rendezvous ids do not repeat. None elsewhere."""
    env = os.environ
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1) > 1:
        return f"slurm{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '0')}"
    if int(env.get("WORLD_SIZE") or 1) > 1 and env.get("TORCHELASTIC_RUN_ID", "none") != "none":
        return f"torchrun-{env['TORCHELASTIC_RUN_ID']}"
    return None


def bf16_precision(sharding: Any) -> str:
    """The trainer precision for bf16 training: FSDP2's plan casts itself (keep fp32 weights), else autocast."""
    return "32-true" if sharding else "bf16-mixed"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("lmm_run_id"):
        OmegaConf.register_new_resolver("lmm_run_id", new_run_id, use_cache=True)
    if not OmegaConf.has_resolver("lmm_bf16_precision"):
        OmegaConf.register_new_resolver("lmm_bf16_precision", bf16_precision)
    if not OmegaConf.has_resolver("lmm_world_dir"):
        from lmm.world.spec import world_dir_name

        OmegaConf.register_new_resolver("lmm_world_dir", world_dir_name)


def fingerprint(cfg: DictConfig, keys: list[str]) -> str:
    """A short hash of the resolved config at `keys`: two stages with equal fingerprints are the same computation.
    A key whose value is null counts as absent (a new option added with a null default changes no fingerprint)."""
    picked = _without_nulls({k: to_plain(OmegaConf.select(cfg, k)) for k in keys})
    blob = json.dumps(picked, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def to_plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


# ------------------------------------------------------------------------------------------------------ validation
STAGES = ("align", "instruct")
TASKS = ("train", "eval")
RANDOM_CONNECTOR = "random"  # stage.instruct.init_connector_from=random: instruct on purpose without an align stage


class ConfigError(ValueError):
    """A config value that cannot work, reported before anything is built or loaded."""


def _choice(cfg: DictConfig, key: str, choices: tuple[str, ...]) -> None:
    value = OmegaConf.select(cfg, key)
    if value is not None and value not in choices:
        raise ConfigError(f"{key}={value!r} is not a valid choice; valid choices are: {', '.join(choices)}")


def validate(cfg: DictConfig) -> None:
    """Check the values Hydra cannot check (free-form strings of closed sets, cross-key rules), so a misspelling
    fails at once with the valid choices instead of minutes later inside a stage."""
    _choice(cfg, "task", TASKS)
    stages = list(cfg.get("stages") or [])
    for name in stages:
        if name not in STAGES:
            raise ConfigError(f"stages contains {name!r}; valid stages are: {', '.join(STAGES)}")
    if cfg.task == "train" and not stages:
        raise ConfigError("stages is empty: nothing to train (stages=[align,instruct], [align] or [instruct])")
    if stages != sorted(stages, key=STAGES.index) or len(set(stages)) != len(stages):
        raise ConfigError(f"stages={stages}: each stage at most once, align before instruct")
    for name in STAGES:
        _choice(cfg, f"stage.{name}.image_aspect", ASPECTS)
        _choice(cfg, f"stage.{name}.loss_normalization", LOSS_NORMALIZATIONS)
        for part in OmegaConf.select(cfg, f"stage.{name}.train") or []:
            if part not in PARTS:
                raise ConfigError(f"stage.{name}.train contains {part!r}; valid parts are: {', '.join(PARTS)}")
    _choice(cfg, "model.encoder.select_feature", SELECT_FEATURES)
    _choice(cfg, "input.tiling", TILINGS)
    _choice(cfg, "eval.image_aspect", ASPECTS)
    for name in STAGES:
        _choice(cfg, f"data.{name}.policy.on_error", ON_ERROR)
        _choice(cfg, f"data.{name}.policy.verify_images", VERIFY_IMAGES)
    if cfg.task == "train" and "instruct" in stages and "align" not in stages \
            and not OmegaConf.select(cfg, "stage.instruct.init_connector_from"):
        raise ConfigError("stages=[instruct] needs the connector it starts from: set stage.instruct.init_connector_from"
                          "=<align stage>/connector.safetensors, or =random to start from a random connector on "
                          "purpose")
    if cfg.task == "eval" and not cfg.get("checkpoint"):
        raise ConfigError("task=eval needs checkpoint=<lmm run folder, model folder or Hugging Face Llava folder>")
