"""The learning-rate schedule is LLaVA's (HF `cosine` with a warmup ratio), step for step, and its length is read
only when a step needs it (after a resumed run's data position is restored)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from lmm.train.module import warmup_cosine


@pytest.mark.parametrize(("total", "ratio"), [(2181, 0.03), (5198, 0.03), (7, 0.03), (10, 0.0), (1, 0.03)])
def test_factor_equals_transformers_cosine_with_warmup(total, ratio):
    reads = []
    factor = warmup_cosine(ratio, lambda: reads.append(1) or total)
    assert factor(0) == (0.0 if ratio else 1.0) and not reads  # building and step 0 do not ask for the length
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=math.ceil(ratio * total),
                                         num_training_steps=total)
    for step in range(total + 1):
        assert factor(step) == pytest.approx(hf.lr_lambdas[0](step), abs=1e-12), step
    assert len(reads) == (1 if total >= 1 else 0)  # read once, then kept
