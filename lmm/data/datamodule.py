"""The Lightning DataModule of one training stage: its sources, template and batching."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import ConcatDataset, DataLoader
from transformers import PreTrainedTokenizerBase

from lmm.data.dataset import LlavaDataset, collate
from lmm.data.records import Record


class LlavaDataModule(L.LightningDataModule):
    """Builds the stage's datasets from `sources` (each: records, image_root, name) and serves micro-batches.

    The template, tokenizer and image transform belong to the model and the stage, so the pipeline hands them in;
    the micro-batch size is derived by the pipeline from the stage's global batch and the number of devices.
    """

    def __init__(self, sources: list[dict[str, Any]], template: Any, tokenizer: PreTrainedTokenizerBase,
                 image_transform: Callable, max_text_length: int, micro_batch_size: int, num_workers: int = 0,
                 shuffle: bool = True, seed: int = 0) -> None:
        super().__init__()
        if not sources:
            raise ValueError("a stage needs at least one data source")
        self.seed = seed
        self.sources, self.template, self.tokenizer = [dict(s) for s in sources], template, tokenizer
        self.image_transform, self.max_text_length = image_transform, max_text_length
        self.micro_batch_size, self.num_workers, self.shuffle = micro_batch_size, num_workers, shuffle
        self.train_set: ConcatDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = ConcatDataset([
                LlavaDataset(s["records"], s.get("image_root"), self.template, self.tokenizer, self.image_transform,
                             self.max_text_length, name=s.get("name")) for s in self.sources])

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.train_set, batch_size=self.micro_batch_size, shuffle=self.shuffle, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          collate_fn=partial(collate, pad_token_id=self.tokenizer.pad_token_id))

    def example_records(self, n: int) -> list[tuple[Record, Path]]:
        """The first `n` records of the first source with their image root: fixed prompts for sample generations."""
        self.setup()
        first = self.train_set.datasets[0]
        return [(rec, first.image_root) for rec in first.records[:n]]
