"""The loss of an optimizer step, whatever the micro-batching: lmm's token mean (`global_tokens`) and LLaVA's mean of
micro-batch means (`llava`), each checked against gradients of transformers' causal-LM loss, not lmm's own."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader
from transformers.loss.loss_utils import ForCausalLMLoss

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


def hf_loss(model, samples: list[dict], mean: bool) -> tuple[torch.Tensor, int]:
    """transformers' causal-LM loss of `samples` as one batch through `model`: the token mean, or the token sum."""
    batch = collate(samples, 0)
    logits, spliced = model(batch["input_ids"], batch["attention_mask"], batch["images"], batch["labels"])
    n = int((spliced.labels[:, 1:] != IGNORE_INDEX).sum())
    return ForCausalLMLoss(logits, spliced.labels, logits.shape[-1], num_items_in_batch=None if mean else 1), n


class GradCapture(LlavaLitModule):
    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)
        self.captured = {n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}
        self.logged = float(self.trainer.callback_metrics["train/loss"])


def _one_step(model, micro_batches: list[list[dict]], normalization: str) -> GradCapture:
    module = GradCapture(model, train=["connector", "llm"], lr=1e-3, warmup_ratio=0.0,
                         loss_normalization=normalization)
    loader = DataLoader([collate(m, 0) for m in micro_batches], batch_size=None)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, accumulate_grad_batches=len(micro_batches),
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    return module


@pytest.mark.parametrize("normalization", ["global_tokens", "llava"])
def test_accumulated_micro_batches_give_the_configured_objective(normalization):
    short, long = sample(10, 3, 0), sample(40, 30, 1)  # 3 vs 30 supervised tokens: the two objectives differ
    model = tiny_llava()
    reference = copy.deepcopy(model)
    module = _one_step(model, [[short], [long]], normalization)

    reference.train()
    if normalization == "global_tokens":  # one mean over the 33 tokens of the step
        objective, n = hf_loss(reference, [short, long], mean=True)
        assert n == 3 + 30
    else:  # LLaVA: each micro-batch's own token mean, averaged over the micro-batches
        objective = (hf_loss(reference, [short], mean=True)[0] + hf_loss(reference, [long], mean=True)[0]) / 2
    objective.backward()
    assert module.logged == pytest.approx(float(objective), rel=1e-5)
    for name, p in reference.named_parameters():
        if p.requires_grad and p.grad is not None:
            torch.testing.assert_close(module.captured[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert len(module.captured) > 0


def test_the_two_objectives_differ_by_hand():
    """By hand from transformers' per-micro-batch token sums: mean losses a (3 tokens) and b (30 tokens) give a
    token mean of (3a + 30b) / 33 and a LLaVA mean of (a + b) / 2; the module logs exactly these."""
    short, long = sample(10, 3, 0), sample(40, 30, 1)
    sums = []
    for s in (short, long):
        total, n = hf_loss(tiny_llava(), [s], mean=False)
        sums.append((float(total), n))
    token_mean = (sums[0][0] + sums[1][0]) / (sums[0][1] + sums[1][1])
    llava_mean = (sums[0][0] / sums[0][1] + sums[1][0] / sums[1][1]) / 2
    assert _one_step(tiny_llava(), [[short], [long]], "global_tokens").logged == pytest.approx(token_mean, rel=1e-5)
    assert _one_step(tiny_llava(), [[short], [long]], "llava").logged == pytest.approx(llava_mean, rel=1e-5)
    assert abs(token_mean - llava_mean) > 1e-3  # the batch is chosen so that the objectives differ


def test_unknown_normalization_is_refused():
    with pytest.raises(ValueError, match="loss_normalization='per_sample'; choose from"):
        LlavaLitModule(tiny_llava(), train=["connector"], lr=1e-3, loss_normalization="per_sample")
