"""The connector of high-resolution input: the base connector applied to every tile, then the tiles' visual tokens
stitched back into one map, stripped of what only covers padding, each row ended by a learned token (spec §6).

It wraps the align stage's connector (`inner`, whose weights load unchanged: the paper does no extra pretraining) and
adds one vector, `image_newline` (LLaVA-NeXT's name; LLaVA-1.5-HD's "row-end token"). Living in the connector, it is
trained whenever the connector is (the instruct stage), saved in connector.safetensors and exported as LLaVA-NeXT's
`image_newline`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lmm.model.connector import Connector
from lmm.model.tiling import Size, TilingSpec


class TiledConnector(Connector):
    """`inner` per tile ([n_tiles, N, d_vision] -> [n_tiles, N, d_llm]), then `pack` per image -> [M_image, d_llm].

    `tiling` is a TilingSpec or its config (TilingSpec.to_config, plus `tile`, the encoder's input side).
    """

    def __init__(self, in_dim: int, out_dim: int, inner: Connector | Callable[..., Connector],
                 tiling: TilingSpec | Mapping[str, Any]) -> None:
        super().__init__()
        if not isinstance(inner, nn.Module):
            inner = inner(in_dim=in_dim, out_dim=out_dim)
        if isinstance(tiling, DictConfig):
            tiling = OmegaConf.to_container(tiling, resolve=True)
        self.spec = tiling if isinstance(tiling, TilingSpec) else TilingSpec(**dict(tiling))
        self.in_dim, self.out_dim, self.inner = in_dim, out_dim, inner
        self._init_kwargs = {}
        # LLaVA-NeXT's init (spec §6.2.7): N(0, 1/sqrt(d)), the scale of a token embedding
        self.image_newline = nn.Parameter(torch.randn(out_dim) / math.sqrt(out_dim)) if self.spec.newline else None

    def partial_config(self) -> dict:
        cls = type(self)
        return {"_target_": f"{cls.__module__}.{cls.__qualname__}", "_partial_": True,
                "inner": self.inner.partial_config(), "tiling": {"tile": self.spec.tile, **self.spec.to_config()}}

    def num_output_tokens(self, num_input_tokens: int) -> int:
        """Visual tokens of an image of the tile's size (the count varies with the image: see `visual_tokens`)."""
        side = math.isqrt(num_input_tokens)
        return self.visual_tokens((self.spec.tile, self.spec.tile), side)

    def visual_tokens(self, image: Size, side: int) -> int:
        return self.spec.num_visual_tokens(image, side)

    def load_align_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load an align-stage connector (the inner one's keys) or a whole tiled connector; with the former,
        `image_newline` keeps its initialisation (it is new in the instruct stage)."""
        if any(k.startswith("inner.") for k in state):
            self.load_state_dict(dict(state))
        else:
            self.inner.load_state_dict(dict(state))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Per-tile visual tokens; `pack` arranges one image's tiles."""
        return self.inner(features)

    def pack(self, tokens: torch.Tensor, image: Size) -> torch.Tensor:
        """One image's tile tokens [n_tiles, side*side, d] (tiles in TiledTransform's order) -> [M, d]."""
        spec = self.spec
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1]:
            raise ValueError(f"{tokens.shape[1]} tokens per tile are not a square grid (tiling needs the CLS token "
                             "dropped: select_feature=patch)")
        rows, cols = spec.grid(image)
        if tokens.shape[0] != spec.num_tiles(image):
            raise ValueError(f"an image of {image} (h, w) makes {spec.num_tiles(image)} tiles, got {tokens.shape[0]}")
        whole = None
        if spec.has_global:
            whole, tokens = (tokens[0], tokens[1:]) if spec.mode == "anyres" else (tokens[-1], tokens[:-1])
        d = tokens.shape[-1]
        fmap = tokens.reshape(rows, cols, side, side, d).permute(0, 2, 1, 3, 4).reshape(rows * side, cols * side, d)
        top, bottom, left, right = spec.feature_window(image, side)
        fmap = fmap[top:bottom, left:right]
        if self.image_newline is not None:
            row_end = self.image_newline.to(fmap.dtype).expand(fmap.shape[0], 1, d)
            fmap = torch.cat([fmap, row_end], dim=1)
        flat = fmap.reshape(-1, d)
        if whole is None:
            return flat
        return torch.cat([whole, flat]) if spec.mode == "anyres" else torch.cat([flat, whole])
