"""The world's identity: the folder a world is built into is named by a hash of everything that shapes it.

Two runs asking for different worlds (another seed, other sizes, other zoo settings, a newer builder) get different
folders, so they never clobber each other and a changed world is never silently reused; asking for the same world
again finds the folder built. Kept free of heavy imports: the config resolver `lmm_world_dir` calls `world_dir_name`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import OmegaConf

BUILD_VERSION = 5  # bump when what the builder writes for a given spec changes (4 was the reverted marked world)


def plain_spec(spec: Any) -> dict[str, Any]:
    """The spec as plain, resolved Python data, with the builder's version added."""
    data = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else dict(spec)
    return {"build_version": BUILD_VERSION, **data}


def spec_hash(spec: Any) -> str:
    blob = json.dumps(plain_spec(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def world_dir_name(name: str, spec: Any) -> str:
    """`<name>-<hash of the spec>`, e.g. tiny-3f2a9c1b7d04."""
    return f"{name}-{spec_hash(spec)}"
