"""The loss of an optimizer step is the mean over all its supervised tokens, whatever the micro-batching."""

from __future__ import annotations

import copy

import lightning as L
import torch
from torch.utils.data import DataLoader

from lmm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from lmm.data.dataset import collate
from lmm.train.module import LlavaLitModule
from tests.conftest import tiny_llava


def sample(n_tokens: int, n_supervised: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 90, (n_tokens,), generator=g)
    ids[1] = IMAGE_TOKEN_INDEX
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[-n_supervised:] = ids[-n_supervised:]
    return {"id": str(seed), "source": "t", "input_ids": ids, "labels": labels,
            "image": torch.randn(3, 28, 28, generator=g), "has_image": True}


class GradCapture(LlavaLitModule):
    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)
        self.captured = {n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}


def test_accumulated_micro_batches_equal_one_batch():
    short, long = sample(10, 3, 0), sample(40, 30, 1)  # 3 vs 30 supervised tokens: a mean of means would differ
    model = tiny_llava()
    reference = copy.deepcopy(model)

    module = GradCapture(model, train=["connector", "llm"], lr=1e-3, warmup_ratio=0.0)
    loader = DataLoader([collate([short], 0), collate([long], 0)], batch_size=None)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, accumulate_grad_batches=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)

    both = collate([short, long], 0)
    reference.train()
    logits, spliced = reference(both["input_ids"], both["attention_mask"], both["images"], both["labels"])
    loss_sum, n = reference.token_loss(logits, spliced.labels)
    assert n == 3 + 30
    (loss_sum / n).backward()
    for name, p in reference.named_parameters():
        if p.requires_grad and p.grad is not None:
            torch.testing.assert_close(module.captured[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert len(module.captured) > 0
