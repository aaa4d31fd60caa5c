"""Putting a LlavaModel together, and casting one: the single assembly path of a run's config (the pipeline), an lmm
model folder and a Hugging Face Llava checkpoint (lmm.model.io), so that all three give the same kind of model."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from transformers import PreTrainedModel

from lmm.model.connector import Connector
from lmm.model.encoder import VisionEncoder
from lmm.model.llava import LlavaModel
from lmm.model.tiled import TiledConnector
from lmm.model.tiling import TilingSpec


def _built(part: Any) -> Any:
    """A part given as a Hydra config (a mapping with `_target_`) is instantiated; a built part is kept."""
    if isinstance(part, DictConfig | Mapping) and "_target_" in part:
        return instantiate(part)
    return part


def build_llava(encoder: VisionEncoder | Mapping[str, Any], connector: Connector | Callable[..., Connector] |
                Mapping[str, Any], llm: PreTrainedModel | Mapping[str, Any], max_length: int = 2048,
                connector_state: Mapping[str, torch.Tensor] | None = None,
                dtype: str | torch.dtype | None = None) -> LlavaModel:
    """Assemble encoder → connector → LLM into a LlavaModel.

    Each part is given built or as its Hydra config (`cfg.model.encoder`, ...). A connector factory (a Hydra
    partial) is sized from the encoder's and LLM's widths; `connector_state` loads its weights (strictly);
    `dtype` casts the connector (the encoder and LLM are loaded in their dtype by their own from_pretrained).
    """
    model = LlavaModel(_built(encoder), _built(connector), _built(llm), max_length=int(max_length))
    if connector_state is not None:
        model.connector.load_state_dict(dict(connector_state))
    if dtype is not None:
        model.connector.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    return model


TILING_KEYS = ("grid", "grid_pinpoints", "max_tiles", "global_context", "unpad", "newline")


def input_tiling(input_cfg: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The tiling an `input` config asks for (conf/input/hd.yaml, anyres.yaml: `tiling: hd|anyres` and its knobs,
    e.g. `input.global_context=false`), or None for a single image per placeholder (res224, res336)."""
    if not input_cfg or not input_cfg.get("tiling"):
        return None
    return {"mode": str(input_cfg["tiling"]), **{k: input_cfg[k] for k in TILING_KEYS if k in input_cfg}}


def tile_model(model: LlavaModel, tiling: Mapping[str, Any]) -> LlavaModel:
    """Make a built model take high-resolution input (`input.tiling`, spec §6), in place: its connector is wrapped in
    a TiledConnector (the align stage's weights load into the inner one; `image_newline` is new) and its context
    grows by the extra visual tokens of the largest grid, so the text keeps the room it had beside a single image."""
    if model.tiled:
        return model
    spec = TilingSpec.from_config(dict(tiling), model.encoder.image_size)
    side = model.encoder.image_size // model.encoder.config.patch_size
    base = model.num_visual_tokens
    inner = model.connector
    model.connector = TiledConnector(inner.in_dim, inner.out_dim, inner, spec).to(next(inner.parameters()).dtype)
    model.max_length += spec.max_visual_tokens(side) - base
    return model


def cast_model(model: nn.Module, dtype: str | torch.dtype) -> nn.Module:
    """Cast every floating-point parameter and persistent buffer (encoder, connector and LLM) to `dtype`, in place.

    This is what `from_pretrained(dtype=...)` gives (LLaVA's fp16 evaluation): computed non-persistent buffers such
    as the rotary `inv_freq` stay fp32. `model.to(float16)` would round them too (Llama's RoPE angles at position
    2047 would move by up to half a radian).
    """
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
        for name, b in module.named_buffers(recurse=False):
            if b.is_floating_point() and b.dtype != dtype and name not in module._non_persistent_buffers_set:
                module._buffers[name] = b.to(dtype)
    return model


def part_dtypes(model: LlavaModel) -> dict[str, str]:
    """The dtype of each part's parameters, e.g. {"encoder": "float16", "connector": "float16", "llm": "float16"}."""
    out = {}
    for part in ("encoder", "connector", "llm"):
        p = next((p for p in getattr(model, part).parameters() if p.is_floating_point()), None)
        out[part] = str(p.dtype).removeprefix("torch.") if p is not None else "none"
    return out
