"""Connectors: map vision features [B, N, d_vision] to visual tokens in the LLM's embedding space [B, M, d_llm].

Every connector takes `in_dim` and `out_dim` (filled in by the model from its encoder and LLM, so configs name only
the connector's own knobs), reports its parameter count and how many visual tokens it emits for N input features.
"""

from __future__ import annotations

import torch
from torch import nn


class Connector(nn.Module):
    """Common contract of the connectors."""

    in_dim: int
    out_dim: int

    _init_kwargs: dict

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return num_input_tokens

    def partial_config(self) -> dict:
        """A Hydra partial that rebuilds this connector for given in/out widths (saved beside the weights)."""
        cls = type(self)
        return {"_target_": f"{cls.__module__}.{cls.__qualname__}", "_partial_": True, **self._init_kwargs}

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class LinearConnector(Connector):
    """One linear layer (original LLaVA, ladder rows 0-2)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self._init_kwargs = in_dim, out_dim, {}
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


class MLPConnector(Connector):
    """Linear → exact GELU → Linear (LLaVA-1.5's `mlp2x_gelu`); `depth` > 2 gives LLaVA's `mlpNx_gelu`."""

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"MLP connector depth must be >= 1, got {depth}")
        self.in_dim, self.out_dim, self._init_kwargs = in_dim, out_dim, {"depth": depth}
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        self.proj = nn.Sequential(*layers)  # indices 0 and 2 match LLaVA's mm_projector.{0,2}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


class _CrossAttentionBlock(nn.Module):
    """Pre-norm block: queries attend to [features; queries], then a GELU MLP; both residual."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(width)
        self.norm_kv = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, queries: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        q = self.norm_q(queries)
        kv = torch.cat([self.norm_kv(features), q], dim=1)
        queries = queries + self.attn(q, kv, kv, need_weights=False)[0]
        return queries + self.mlp(self.norm_mlp(queries))


class QFormerLite(Connector):
    """Learned queries read the image through a few cross-attention blocks: a fixed number of visual tokens.

    A small Perceiver/Q-Former-style resampler (spec §8): it trades visual tokens for parameters, the comparison the
    LLaVA-1.5 paper makes against InstructBLIP.
    """

    def __init__(self, in_dim: int, out_dim: int, num_queries: int = 32, width: int = 256, depth: int = 2,
                 num_heads: int = 4, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self._init_kwargs = {"num_queries": num_queries, "width": width, "depth": depth, "num_heads": num_heads,
                             "mlp_ratio": mlp_ratio}
        self.num_queries = num_queries
        self.input_proj = nn.Linear(in_dim, width)
        self.queries = nn.Parameter(torch.randn(num_queries, width) * 0.02)
        self.blocks = nn.ModuleList(_CrossAttentionBlock(width, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.output_proj = nn.Linear(width, out_dim)

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return self.num_queries

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = self.input_proj(features)
        queries = self.queries.unsqueeze(0).expand(features.shape[0], -1, -1)
        for block in self.blocks:
            queries = block(queries, features)
        return self.output_proj(self.norm(queries))
