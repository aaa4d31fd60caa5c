"""FSDP2 for a LlavaModel: the sharding plan (applied in LightningModule.configure_model) and the strategy running it.

`trainer=fsdp` uses `FSDP2Strategy` (Lightning's ModelParallelStrategy with pure data parallelism over every
device of every node) and `FSDP2Plan`. Lightning's FSDPStrategy (FSDP1) is not used: it refuses CPUs, and FSDP2 is
where PyTorch and Lightning go for sharded training.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointWrapper,
    apply_activation_checkpointing,
)
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

# Prefixes that wrappers insert into parameter names but not into (distributed) state-dict keys.
_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "_orig_mod.")


def clean_name(name: str) -> str:
    """A parameter's name as state dicts spell it: without activation-checkpoint, FSDP1 and compile wrappers."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def block_classes(model: nn.Module) -> tuple[type, ...]:
    """The transformer-block classes of a Hugging Face model: the units it declares it must not be split inside."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return tuple({type(m) for m in model.modules() if type(m).__name__ in names})


def _blocks(part: nn.Module, classes: tuple[type, ...]) -> list[nn.Module]:
    """The outermost module of each block (its activation-checkpoint wrapper when it has one), innermost first:
    fully_shard must be applied bottom-up."""
    wrappers = {id(m._checkpoint_wrapped_module): m for m in part.modules() if isinstance(m, CheckpointWrapper)}
    return [wrappers.get(id(m), m) for m in reversed(list(part.modules())) if isinstance(m, classes)]


class FSDP2Plan:
    """Shard each transformer block of the LLM and of the encoder, then the whole model (which holds the connector,
    the LLM's embeddings and head and the encoder's embeddings).

    Parameters stay fp32 (the optimizer's master copy; keep `trainer.precision=32-true`) and FSDP2 casts them to
    `param_dtype` for compute; gradients are reduced in `reduce_dtype`. Activation checkpointing wraps the LLM's
    blocks (the encoder runs without grad) *before* sharding, so that recomputation happens inside the sharded unit
    and does not gather its parameters a second time; it replaces the stage's Hugging Face gradient checkpointing.
    """

    def __init__(self, param_dtype: str = "bfloat16", reduce_dtype: str = "float32",
                 activation_checkpointing: bool = True, reshard_after_forward: bool = True) -> None:
        self.mp_policy = MixedPrecisionPolicy(param_dtype=getattr(torch, param_dtype),
                                              reduce_dtype=getattr(torch, reduce_dtype))
        self.activation_checkpointing = activation_checkpointing
        self.reshard_after_forward = reshard_after_forward

    def __call__(self, model: nn.Module, device_mesh: DeviceMesh) -> None:
        if isinstance(model, FSDPModule):
            return  # already sharded (configure_model may run more than once)
        mesh = device_mesh["data_parallel"] if device_mesh.mesh_dim_names else device_mesh
        llm_blocks, encoder_blocks = block_classes(model.llm), block_classes(model.encoder.tower)
        if not llm_blocks:
            raise ValueError(f"{type(model.llm).__name__} declares no _no_split_modules: cannot find its blocks")
        if self.activation_checkpointing:
            if any(getattr(m, "gradient_checkpointing", False) for m in model.llm.modules()):
                disable = getattr(model.llm, "activation_checkpointing_disable", None) or \
                    model.llm.gradient_checkpointing_disable
                disable()  # Hugging Face's own checkpointing: one recomputation is enough
            apply_activation_checkpointing(model.llm, check_fn=lambda m: isinstance(m, llm_blocks))
        kwargs = {"mesh": mesh, "mp_policy": self.mp_policy, "reshard_after_forward": self.reshard_after_forward}
        for part, classes in ((model.llm, llm_blocks), (model.encoder.tower, encoder_blocks)):
            for block in _blocks(part, classes) if classes else []:
                fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[nn.Module]:
    """Use a model outside its forward (e.g. `LlavaModel.generate`): gather the parameters that FSDP2 keeps in the
    root unit (embeddings, head, connector); the blocks gather their own in their forward. A no-op without FSDP2.

    Every rank must run the same calls inside (pass `synced_gpus=True` to Hugging Face generate).
    """
    if not isinstance(model, FSDPModule):
        yield model
        return
    model.unshard()
    try:
        yield model
    finally:
        model.reshard()


class FSDP2Strategy(ModelParallelStrategy):
    """ModelParallelStrategy as plain FSDP2: one data-parallel mesh dimension over all devices of all nodes.

    - `data_parallel_size="auto"` means every process (ModelParallelStrategy's own "auto" means the number of nodes,
      made for tensor parallelism inside a node).
    - Resuming from a sharded (DCP) checkpoint that holds only some of the weights (LlavaLitModule keeps only the
      trainable ones) loads those and leaves the others as configured; a trainable weight missing from the
      checkpoint is an error. ModelParallelStrategy would refuse the partial checkpoint.
    - Resuming from a consolidated checkpoint (`save_distributed_checkpoint=false`) maps parameter names through
      activation-checkpoint wrappers, which ModelParallelStrategy would silently skip.
    """

    def __init__(self, data_parallel_size: int | str = "auto", tensor_parallel_size: int = 1,
                 save_distributed_checkpoint: bool = True, **kwargs: Any) -> None:
        super().__init__(data_parallel_size=data_parallel_size, tensor_parallel_size=tensor_parallel_size,
                         save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)

    def _setup_distributed(self) -> None:
        super()._setup_distributed()
        # sizes from the process group itself (torchrun, SLURM or Lightning's launcher), read before the mesh is built
        world = torch.distributed.get_world_size()
        if self._tensor_parallel_size == "auto":
            self._tensor_parallel_size = 1
        if self._data_parallel_size == "auto":
            self._data_parallel_size = world // self._tensor_parallel_size

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """Sharded checkpoints are written into `<path>.partial` and then swapped in: a run stopped while saving
        keeps its previous `last.ckpt` (DCP would otherwise overwrite the shards in place)."""
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(filepath))
        partial, old = path.with_name(path.name + ".partial"), path.with_name(path.name + ".old")
        if self.global_rank == 0:
            _remove(partial)
        self.barrier()
        super().save_checkpoint(checkpoint, partial, storage_options)
        self.barrier()
        if self.global_rank == 0:
            _remove(old)
            if path.exists():
                path.rename(old)
            partial.rename(path)
            _remove(old)
        self.barrier()

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        from lightning.fabric.strategies.model_parallel import _is_sharded_checkpoint
        from lightning.fabric.utilities.load import _METADATA_FILENAME
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint import load as dcp_load
        from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        path = Path(self.broadcast(checkpoint_path))
        module = self.model
        assert module is not None
        if not _is_sharded_checkpoint(path):
            return self._load_full_checkpoint(path, weights_only)
        saved = set(FileSystemReader(str(path)).read_metadata().state_dict_metadata)
        model_state = get_model_state_dict(module)
        wanted = {k: v for k, v in model_state.items() if f"state_dict.{k}" in saved}
        _check_trainable_present(module, wanted.keys(), path)
        dcp_load({"state_dict": wanted}, checkpoint_id=path, planner=DefaultLoadPlanner(allow_partial_load=True))
        set_model_state_dict(module, wanted, options=StateDictOptions(strict=False))
        for idx, optimizer in enumerate(self.optimizers):
            state = {f"optimizer_{idx}": get_optimizer_state_dict(module, optimizer)}
            dcp_load(state, checkpoint_id=path)
            set_optimizer_state_dict(module, optimizer, optim_state_dict=state[f"optimizer_{idx}"],
                                     options=StateDictOptions(cpu_offload=True))
        return torch.load(path / _METADATA_FILENAME, weights_only=weights_only)

    def _load_full_checkpoint(self, path: Path, weights_only: bool | None) -> dict[str, Any]:
        from lightning.fabric.strategies.model_parallel import _rekey_optimizer_state_if_needed
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        if not path.is_file():
            raise ValueError(f"{path} is neither a sharded checkpoint folder nor a checkpoint file")
        module = self.model
        checkpoint = torch.load(path, mmap=True, map_location="cpu", weights_only=weights_only)
        state = checkpoint.pop("state_dict")
        _check_trainable_present(module, state.keys(), path)
        set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, strict=False))
        for idx, optimizer in enumerate(self.optimizers):
            optim_state = _rekey_optimizer_state_if_needed(checkpoint["optimizer_states"][idx], module)
            set_optimizer_state_dict(module, optimizer, optim_state_dict=optim_state,
                                     options=StateDictOptions(full_state_dict=True, strict=True))
        return checkpoint


def _check_trainable_present(module: nn.Module, keys: Any, path: Path) -> None:
    keys = set(keys)
    missing = [n for n, p in ((clean_name(n), p) for n, p in module.named_parameters()) if p.requires_grad
               and n not in keys]
    if missing:
        raise KeyError(f"{path} lacks {len(missing)} trainable weight(s), e.g. {missing[:3]}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
