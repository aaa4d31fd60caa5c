"""Config helpers: OmegaConf resolvers, validation before anything heavy starts, and the stage cache key."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf


def new_run_id(name: str | None = None) -> str:
    """A run id that never collides: the given name, or the time plus random hex (not a timestamp alone)."""
    if name:
        return str(name)
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("lmm_run_id"):
        OmegaConf.register_new_resolver("lmm_run_id", new_run_id, use_cache=True)


def fingerprint(cfg: DictConfig, keys: list[str]) -> str:
    """A short hash of the resolved config at `keys`: two stages with equal fingerprints are the same computation."""
    picked = {k: to_plain(OmegaConf.select(cfg, k)) for k in keys}
    blob = json.dumps(picked, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def to_plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
