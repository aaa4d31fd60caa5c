"""Per-device memory of a training stage, estimated from the model configs before any weight is loaded.

`check_training_memory(cfg, stage)` runs before a stage loads its model: it prints one line (the estimate per device,
strategy, precision, devices) and refuses a run whose estimate exceeds a device's memory, naming `trainer=fsdp` when
the strategy replicates the model. The parameter counts come from the encoder, connector and LLM built on the meta
device from their configs (`AutoConfig`: a config.json, no weights).

Bytes per device, for a part of N parameters (m = bytes of the master dtype: 4 for fp32; 2 under "bf16-true" /
"16-true", which convert the whole model; a frozen part keeps its load dtype: `model.<part>.dtype`, else the
checkpoint config's dtype as transformers' dtype="auto" does, else fp32):
- weights:        trainable N*m; frozen N*(bytes of its load dtype)
- gradients:      trainable N*m
- AdamW:          trainable 2*N*m (exp_avg and exp_avg_sq, in the parameters' dtype)
- compute copies: "*-mixed" (autocast) caches a 2-byte copy of every trainable weight until the forward ends:
  2*N_trainable (DDP's gradient buckets persist between steps, so they coexist with the gradients). FSDP2 holds
  gathered units in `sharding.param_dtype` instead: the root unit (embeddings, head, connector: kept unsharded
  between forward and backward) and two blocks (the running one and the prefetched one).
FSDP2 (trainer=fsdp) shards weights, gradients and AdamW states over every device: those three are divided by the
world size. DDP and a single device hold all of them on each device. Left out: activations (they depend on the
micro-batch, the sequence lengths and checkpointing), the CUDA context and allocator fragmentation. So the estimate
is about a lower bound: a run above a device's memory cannot fit; one below it may still run out of memory.
Vicuna-7B's instruct stage under DDP: 16 bytes per LLM parameter (108 GB) plus the bf16 copies (13.5 GB).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from lmm.config import ConfigError, to_plain

GB = 1e9  # the estimate and trainer.memory_check.device_memory_gb count in GB of 1e9 bytes


class DoesNotFit(ConfigError):
    """A training run whose estimated memory per device exceeds a device's memory."""


@dataclass(frozen=True)
class PartCount:
    """One part of a LlavaModel as the estimate sees it."""

    params: int  # unique parameters
    dtype: torch.dtype  # what it is loaded in (what a frozen part is held in)
    largest_block: int = 0  # parameters of its largest FSDP2 unit (a transformer block), 0 without blocks
    root: int = 0  # parameters outside its blocks: they belong to FSDP2's root unit


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device of one training stage (activations excluded)."""

    stage: str
    strategy: str  # "fsdp" (sharded), "ddp" (replicated) or "single" (one device)
    precision: str
    devices: int
    weights: int
    gradients: int
    optimizer: int
    compute: int  # autocast's weight copies, or FSDP2's gathered units

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.compute

    @property
    def states(self) -> int:
        """Weights + gradients + AdamW states: what sharding divides."""
        return self.weights + self.gradients + self.optimizer

    def line(self) -> str:
        what = "gathered units" if self.strategy == "fsdp" else "autocast weight copies"
        return (f"memory {self.stage}: ~{size(self.total)} per device = weights {size(self.weights)} + gradients "
                f"{size(self.gradients)} + AdamW {size(self.optimizer)} + {what} {size(self.compute)} (activations "
                f"excluded); {self.strategy}, {self.precision}, {_devices(self.devices)}")


def size(num_bytes: float) -> str:
    """12.3 GB, or 45.6 MB below a tenth of a GB (tiny models)."""
    return f"{num_bytes / GB:.1f} GB" if num_bytes >= GB / 10 else f"{num_bytes / 1e6:.1f} MB"


def _devices(n: int) -> str:
    return f"{n} device{'s' if n != 1 else ''}"


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# ------------------------------------------------------------------------------------------------------ arithmetic
def estimate(parts: Mapping[str, PartCount], trainable: Iterable[str], strategy: str, devices: int,
             precision: str | int, param_dtype: torch.dtype = torch.bfloat16, stage: str = "") -> MemoryEstimate:
    """Bytes per device (see the module docstring for the formula); `strategy` is "fsdp", "ddp" or "single"."""
    precision = str(precision)
    trainable = set(trainable)
    converts = {"bf16-true": 2, "16-true": 2, "64-true": 8, "64": 8}  # precisions that convert the whole model
    master = converts.get(precision, 4)
    mixed = precision.endswith("-mixed") or precision in ("16", "bf16")
    weights = gradients = optimizer = copies = 0
    for name, part in parts.items():
        if name in trainable:
            weights += part.params * master
            gradients += part.params * master
            optimizer += 2 * part.params * master
            copies += 2 * part.params if mixed else 0
        else:
            weights += part.params * (converts.get(precision) or dtype_bytes(part.dtype))
    if strategy == "fsdp":
        weights, gradients, optimizer = (math.ceil(x / devices) for x in (weights, gradients, optimizer))
        root = sum(p.root for p in parts.values())
        block = max((p.largest_block for p in parts.values()), default=0)
        copies = (root + 2 * block) * dtype_bytes(param_dtype)
    return MemoryEstimate(stage, strategy, precision, devices, weights, gradients, optimizer, copies)


# -------------------------------------------------------------------------------------------- counting on meta
def meta_model(encoder_config: Any, llm_config: Any, connector: Callable[..., nn.Module]) -> nn.Module:
    """A LlavaModel with no storage (the meta device) built from a vision-tower config (or a full CLIP/SigLIP config,
    whose vision part is taken), a causal-LM config and a connector factory `(in_dim=, out_dim=)`."""
    from transformers import AutoModel, AutoModelForCausalLM

    from lmm.model.build import build_llava
    from lmm.model.encoder import VisionEncoder

    vision = getattr(encoder_config, "vision_config", None) or encoder_config
    with torch.device("meta"):
        tower = AutoModel.from_config(vision)
        llm = AutoModelForCausalLM.from_config(llm_config)
        return build_llava(VisionEncoder(tower), connector, llm)


def _count(part: nn.Module, blocks: tuple[type, ...], dtype: torch.dtype) -> PartCount:
    total = sum(p.numel() for p in part.parameters())
    names = [n for n, m in part.named_modules() if blocks and isinstance(m, blocks)]
    outer = [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]
    modules = dict(part.named_modules())
    sizes = [sum(p.numel() for p in modules[n].parameters()) for n in outer]
    return PartCount(total, dtype, max(sizes, default=0), total - sum(sizes))


def count_parts(model: nn.Module, dtypes: Mapping[str, torch.dtype] | None = None) -> dict[str, PartCount]:
    """Parameter counts of a (meta) LlavaModel's parts, with the blocks lmm.train.sharding.FSDP2Plan shards."""
    from lmm.train.sharding import block_classes

    dtypes = dtypes or {}
    return {"encoder": _count(model.encoder, block_classes(model.encoder.tower), dtypes.get("encoder", torch.float32)),
            "connector": _count(model.connector, (), dtypes.get("connector", torch.float32)),
            "llm": _count(model.llm, block_classes(model.llm), dtypes.get("llm", torch.float32))}


def load_dtype(configured: str | None, hf_config: Any) -> torch.dtype:
    """The dtype a part is loaded in: the configured one, else the checkpoint config's (transformers' "auto")."""
    if configured:
        return getattr(torch, str(configured))
    found = hf_config.dtype if hasattr(hf_config, "dtype") else getattr(hf_config, "torch_dtype", None)
    if isinstance(found, str):
        found = getattr(torch, found, None)
    return found if isinstance(found, torch.dtype) else torch.float32


# ---------------------------------------------------------------------------------------------- from the config
def _uses_gpu(tcfg: Any) -> bool:
    return str(tcfg.get("accelerator", "auto")) in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def world_size(tcfg: Any) -> int:
    """Processes of the run from trainer.devices × trainer.num_nodes ("auto": the visible GPUs, one CPU process)."""
    devices = tcfg.get("devices", 1)
    if isinstance(devices, (list, tuple, ListConfig)):
        n = len(devices)
    elif devices is None or str(devices) in ("auto", "-1"):
        n = torch.cuda.device_count() if _uses_gpu(tcfg) else 1
    elif isinstance(devices, str) and "," in devices:
        n = len([d for d in devices.split(",") if d.strip()])
    else:
        n = int(devices)
    return max(1, n) * int(tcfg.get("num_nodes", 1) or 1)


def strategy_kind(cfg: DictConfig, devices: int) -> str:
    """"fsdp" when an FSDP strategy runs a sharding plan (trainer=fsdp), else "ddp" or "single"."""
    strategy = OmegaConf.select(cfg, "trainer.strategy")
    name = str(strategy.get("_target_", "") if isinstance(strategy, Mapping) else strategy).lower()
    if ("fsdp" in name or "modelparallel" in name) and cfg.get("sharding"):
        return "fsdp"
    return "ddp" if devices > 1 else "single"


@dataclass(frozen=True)
class TrainingSetup:
    """What the estimate of one stage depends on, read from the config."""

    stage: str
    parts: dict[str, PartCount]
    trainable: list[str]
    strategy: str
    devices: int
    precision: str
    param_dtype: torch.dtype  # FSDP2's compute dtype (sharding.param_dtype)

    def estimate(self) -> MemoryEstimate:
        return estimate(self.parts, self.trainable, self.strategy, self.devices, self.precision, self.param_dtype,
                        self.stage)


def training_setup(cfg: DictConfig, stage: str) -> TrainingSetup:
    """The parts, strategy, devices and precision of training `stage`, from the encoder's and LLM's config.json."""
    from hydra.utils import instantiate
    from transformers import AutoConfig

    mcfg = cfg.model
    encoder_config = AutoConfig.from_pretrained(str(mcfg.encoder.pretrained))
    llm_config = AutoConfig.from_pretrained(str(mcfg.llm.pretrained))
    model = meta_model(encoder_config, llm_config, instantiate(mcfg.connector))
    dtypes = {"encoder": load_dtype(mcfg.encoder.get("dtype"), encoder_config), "connector": torch.float32,
              "llm": load_dtype(mcfg.llm.get("dtype"), llm_config)}
    devices = world_size(cfg.trainer)
    param_dtype = getattr(torch, str(OmegaConf.select(cfg, "sharding.param_dtype") or "bfloat16"))
    return TrainingSetup(stage, count_parts(model, dtypes), list(cfg.stage[stage].train), strategy_kind(cfg, devices),
                         devices, str(cfg.trainer.precision), param_dtype)


def device_capacity(tcfg: Any) -> tuple[int | None, str]:
    """(bytes of one device, where that figure comes from): trainer.memory_check.device_memory_gb, else the GPU's
    total memory; None on a CPU with no stated capacity."""
    stated = (tcfg.get("memory_check") or {}).get("device_memory_gb")
    if stated:
        return int(float(stated) * GB), "trainer.memory_check.device_memory_gb"
    if _uses_gpu(tcfg):
        index = int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count()
        props = torch.cuda.get_device_properties(index)
        return int(props.total_memory), f"cuda:{index} {props.name}"
    return None, "none stated (trainer.memory_check.device_memory_gb)"


def fsdp_devices_needed(parts: Mapping[str, PartCount], trainable: Iterable[str], capacity: int,
                        param_dtype: torch.dtype = torch.bfloat16, most: int = 4096) -> int | None:
    """The fewest devices over which FSDP2 fits the estimate into `capacity`, or None (not even `most`)."""
    trainable = list(trainable)
    for n in range(1, most + 1):
        if estimate(parts, trainable, "fsdp", n, "32-true", param_dtype).total <= capacity:
            return n
    return None


def refusal(est: MemoryEstimate, capacity: int, where: str, needed: int | None) -> str:
    """Why the run cannot start, and what to run instead."""
    head = (f"the {est.stage} stage needs ~{size(est.total)} per device ({est.strategy}, {est.precision}, "
            f"{_devices(est.devices)}; activations excluded) but a device holds {size(capacity)} ({where}). ")
    more = f"at least {needed} devices" if needed else "more devices than that"
    if est.strategy != "fsdp":
        fix = (f"Without sharding every device keeps the whole weights ({size(est.weights)}), gradients and "
               f"AdamW states ({size(est.gradients + est.optimizer)}): use trainer=fsdp, which shards them "
               f"over the devices ({more} for this model)")
    else:
        fix = f"trainer=fsdp over {_devices(est.devices)} is not enough: use {more} (trainer.devices, num_nodes)"
    return head + fix + "; or set trainer.memory_check.enabled=false to start anyway."


def check_training_memory(cfg: DictConfig, stage: str, log: Callable[[str], None] = print) -> MemoryEstimate | None:
    """Print the stage's estimate per device; raise DoesNotFit when it exceeds a known device capacity.

    Skipped (with a line saying so) when trainer.memory_check.enabled is false or a config.json cannot be read.
    """
    mc = OmegaConf.select(cfg, "trainer.memory_check") or {}
    if not mc.get("enabled", True):
        log(f"memory {stage}: check off (trainer.memory_check.enabled=false)")
        return None
    try:
        setup = training_setup(cfg, stage)
    except (OSError, ValueError, KeyError) as err:  # e.g. a hub id offline and not cached
        log(f"memory {stage}: no estimate ({type(err).__name__}: {str(err).splitlines()[0][:200]})")
        return None
    est = setup.estimate()
    capacity, where = device_capacity(cfg.trainer)
    log(est.line() + (f"; a device holds {size(capacity)} ({where})" if capacity else
                      f"; device capacity {where}: not checked"))
    if capacity is not None and est.total > capacity:
        needed = fsdp_devices_needed(setup.parts, setup.trainable, capacity, setup.param_dtype)
        raise DoesNotFit(refusal(est, capacity, where, needed))
    return est


def without_memory_check(tcfg: DictConfig) -> DictConfig:
    """The trainer config, resolved (its interpolations may point outside it, e.g. to `sharding`), without lmm's
    `memory_check` block, which Lightning's Trainer does not take."""
    plain = to_plain(tcfg)
    plain.pop("memory_check", None)
    return OmegaConf.create(plain)
