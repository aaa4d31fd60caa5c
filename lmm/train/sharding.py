"""FSDP2 sharding plan for a LlavaModel, applied in LightningModule.configure_model under ModelParallelStrategy."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


def block_classes(model: nn.Module) -> tuple[type, ...]:
    """The transformer-block classes of a Hugging Face model: the units it declares it must not be split inside."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return tuple({type(m) for m in model.modules() if type(m).__name__ in names})


class FSDP2Plan:
    """Shard each transformer block of the LLM and the encoder, then the whole model (which holds the connector).

    Parameters stay fp32 (the optimizer's master copy) and are cast to `param_dtype` for compute; gradients are
    reduced in `reduce_dtype`. Activation checkpointing wraps the LLM's blocks (the encoder runs without grad).
    """

    def __init__(self, param_dtype: str = "bfloat16", reduce_dtype: str = "float32",
                 activation_checkpointing: bool = True, reshard_after_forward: bool = True) -> None:
        self.mp_policy = MixedPrecisionPolicy(param_dtype=getattr(torch, param_dtype),
                                              reduce_dtype=getattr(torch, reduce_dtype))
        self.activation_checkpointing = activation_checkpointing
        self.reshard_after_forward = reshard_after_forward

    def __call__(self, model: nn.Module, device_mesh: DeviceMesh) -> None:
        mesh = device_mesh["data_parallel"] if device_mesh.mesh_dim_names else device_mesh
        llm_blocks, encoder_blocks = block_classes(model.llm), block_classes(model.encoder.tower)
        if not llm_blocks:
            raise ValueError(f"{type(model.llm).__name__} declares no _no_split_modules: cannot find its blocks")
        if self.activation_checkpointing:
            apply_activation_checkpointing(model.llm, check_fn=lambda m: isinstance(m, llm_blocks))
        kwargs = {"mesh": mesh, "mp_policy": self.mp_policy, "reshard_after_forward": self.reshard_after_forward}
        for part, blocks in ((model.llm, llm_blocks), (model.encoder.tower, encoder_blocks)):
            for module in part.modules():
                if isinstance(module, blocks):
                    fully_shard(module, **kwargs)
        fully_shard(model, **kwargs)
