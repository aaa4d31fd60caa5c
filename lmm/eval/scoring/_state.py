"""State helpers shared by the scoring metrics.

torchmetrics can only all-gather tensors, so metrics that must see whole questions (MME image pairs, MMBench
circular groups) keep integer records in a list state reduced with "cat"; everything else keeps sums.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat


def ratio(num: float | Tensor, den: float | Tensor) -> float:
    """num / den as a float, 0.0 when the denominator is 0 (no data, or e.g. no positive predictions)."""
    den = float(den)
    return float(num) / den if den else 0.0


def stable_hash(text: str) -> int:
    """A process-independent signed 64-bit key for a string (Python's hash() differs between ranks)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


class RecordMetric(Metric):
    """A metric whose state is a growing table of int64 rows (``width`` columns), gathered across ranks by "cat"."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, width: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._width = width
        self.add_state("records", default=[], dist_reduce_fx="cat")

    def _add_rows(self, rows: Sequence[Sequence[int]]) -> None:
        if rows:
            self.records.append(torch.tensor(rows, dtype=torch.long, device=self.device).reshape(-1, self._width))

    def _rows(self) -> Tensor:
        """All rows (after a sync: of all ranks) as one (n, width) tensor."""
        if isinstance(self.records, Tensor):
            return self.records.reshape(-1, self._width)
        if not self.records:
            return torch.zeros(0, self._width, dtype=torch.long, device=self.device)
        return dim_zero_cat(self.records).reshape(-1, self._width)

    def sync(self, *args: Any, **kwargs: Any) -> None:
        # A rank that saw no data would otherwise send torchmetrics' untyped 1-D placeholder and break the gather.
        if isinstance(self.records, list) and not self.records:
            self.records.append(torch.zeros(0, self._width, dtype=torch.long, device=self.device))
        super().sync(*args, **kwargs)


def group_all_true(keys: Tensor, ok: Tensor) -> tuple[Tensor, Tensor]:
    """Group rows by key; return (unique keys, bool per group: every row of the group ok)."""
    uniq, inverse = torch.unique(keys, return_inverse=True)
    wrong = torch.zeros(len(uniq), dtype=torch.long, device=keys.device).index_add_(0, inverse, (~ok).long())
    return uniq, wrong == 0
