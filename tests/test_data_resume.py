"""Exact mid-epoch resume with 2 dataloader workers: a run stopped after step k and resumed from its checkpoint sees
exactly the micro-batches an uninterrupted run sees from step k+1 on, also across an epoch boundary and around an
epoch's last, smaller step; the per-source accounting and the tally of steps and samples carry on where they
stopped."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lmm.data.args import LoaderArgs, MixtureArgs, StoreArgs
from lmm.data.datamodule import LlavaDataModule
from lmm.train.accounting import DataAccounting
from lmm.train.callbacks import TrainedTally
from tests.synthetic import data_kit, image_and_text_sources


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return data_kit(root / "kit"), image_and_text_sources(root, 40, 30), root


class Recorder(L.LightningModule):
    """Records the ids of every micro-batch; its one parameter makes the optimizer and checkpoints real."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[str]] = []
        self.supervised = 0

    def training_step(self, batch, batch_idx):
        self.seen.append(list(batch["ids"]))
        self.supervised += int((batch["labels"] != -100).sum())
        return (self.w - batch["input_ids"].float().mean()).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def _fit(setup, tmp_path, max_steps: int = -1, ckpt: str | None = None, every: int | None = None,
         num_samples: int = 48):
    kit, sources, root = setup
    dm = LlavaDataModule(sources, **kit, max_text_length=512, micro_batch_size=3, seed=5,
                         mixture=MixtureArgs(weights={"img": 0.6, "txt": 0.4}, num_samples=num_samples),
                         loader=LoaderArgs(num_workers=2, group_by_modality_length=True),
                         store=StoreArgs(cache_dir=str(root / "cache"), progress=False))
    module, accounting = Recorder(), DataAccounting("instruct", log_every_n_steps=1)
    tally = TrainedTally("instruct")
    callbacks: list = [accounting, tally]
    if every:
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=every,
                                                             save_top_k=-1, filename="{step}"))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, max_steps=max_steps, accumulate_grad_batches=2,
                        logger=False, enable_checkpointing=bool(every), enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    accounting.module, accounting.tally = module, tally
    return module.seen, accounting


# An epoch is 8 steps of 2 micro-batches of 3 samples: 48 samples, or 46 with a last step of 2 + 2 samples.
# Stops: mid-epoch 0; mid-epoch 1; right before epoch 0's smaller step; right after it; before epoch 1's.
@pytest.mark.parametrize(("num_samples", "stop_step"), [(48, 3), (48, 11), (46, 7), (46, 8), (46, 15)])
def test_resumed_run_sees_the_same_batches(setup, tmp_path, num_samples, stop_step):
    full, full_counts = _fit(setup, tmp_path / "full", num_samples=num_samples)
    assert len(full) == 32 and len({tuple(b) for b in full[:16]}) == 16
    assert sum(len(b) for b in full[:16]) == num_samples  # every sample of the epoch, the smaller step's too
    first, _ = _fit(setup, tmp_path / "a", max_steps=stop_step, every=stop_step, num_samples=num_samples)
    assert first == full[: 2 * stop_step]
    rest, counts = _fit(setup, tmp_path / "b", ckpt=str(tmp_path / "a" / f"step={stop_step}.ckpt"),
                        num_samples=num_samples)
    assert rest == full[2 * stop_step:]
    assert counts.metrics() == full_counts.metrics()
    assert counts.tally.summary() == full_counts.tally.summary()
    assert full_counts.tally.steps == 16 and full_counts.tally.samples == 2 * num_samples
    metrics = full_counts.metrics()
    assert metrics["instruct/data/img/samples"] + metrics["instruct/data/txt/samples"] == 2 * num_samples
    assert abs(metrics["instruct/data/img/share"] - 0.6) < 0.03
    assert metrics["instruct/data/img/supervised_tokens"] > 0 and metrics["instruct/data/rejected"] == 0
    tokens = metrics["instruct/data/img/supervised_tokens"] + metrics["instruct/data/txt/supervised_tokens"]
    assert tokens == full_counts.module.supervised  # labels != -100, as the loss counts them


def test_resume_with_another_mixture_is_refused(setup, tmp_path):
    _fit(setup, tmp_path / "a", max_steps=2, every=2)
    kit, sources, root = setup
    dm = LlavaDataModule(sources, **kit, max_text_length=512, micro_batch_size=3, seed=6,
                         mixture=MixtureArgs(weights={"img": 0.6, "txt": 0.4}, num_samples=48),
                         loader=LoaderArgs(num_workers=0), store=StoreArgs(cache_dir=str(root / "cache"),
                                                                           progress=False))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, accumulate_grad_batches=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match="different mixture or batching"):
        trainer.fit(Recorder(), datamodule=dm, ckpt_path=str(tmp_path / "a" / "step=2.ckpt"))
