"""A LLaVA-format dataset: records → (input_ids, labels, pixels), templated and masked on the fly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from lmm.constants import IGNORE_INDEX
from lmm.data.images import load_image
from lmm.data.records import Record, load_records, resolve_image_path, validate_record
from lmm.data.templates import truncate


class LlavaDataset(Dataset):
    """Map-style dataset over one LLaVA-format file; images are read lazily, per item, as LLaVA does."""

    def __init__(self, records: str | Path, image_root: str | Path | None, template: Any,
                 tokenizer: PreTrainedTokenizerBase, image_transform: Callable, max_text_length: int,
                 name: str | None = None) -> None:
        self.path = Path(records)
        self.image_root = Path(image_root) if image_root is not None else self.path.parent
        self.records: list[Record] = load_records(self.path)
        for i, rec in enumerate(self.records):
            validate_record(rec, source=self.path, index=i)
        self.template, self.tokenizer = template, tokenizer
        self.image_transform, self.max_text_length = image_transform, max_text_length
        self.name = name or self.path.stem

    def __len__(self) -> int:
        return len(self.records)

    def image_size(self) -> int:
        return self.image_transform.image_size

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        has_image = rec.image is not None
        encoded = truncate(self.template.encode(rec.conversations, self.tokenizer, has_image=has_image),
                           self.max_text_length)
        if has_image:
            pixels = self.image_transform(load_image(resolve_image_path(self.image_root, rec.image)))
        else:  # text-only samples carry a blank image so every batch has pixels (see LlavaModel.splice)
            size = self.image_transform.image_size
            pixels = torch.zeros(3, size, size)
        return {"id": rec.id, "input_ids": torch.tensor(encoded.input_ids), "labels": torch.tensor(encoded.labels),
                "image": pixels, "has_image": has_image, "source": self.name}


def collate(samples: list[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Right-pad ids (pad id) and labels (IGNORE_INDEX); the attention mask comes from lengths, not from pad ids."""
    lengths = [len(s["input_ids"]) for s in samples]
    longest = max(lengths)
    input_ids = torch.full((len(samples), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), longest), dtype=torch.long)
    for i, s in enumerate(samples):
        n = lengths[i]
        input_ids[i, :n], labels[i, :n], attention_mask[i, :n] = s["input_ids"], s["labels"], 1
    return {"ids": [s["id"] for s in samples], "sources": [s["source"] for s in samples],
            "input_ids": input_ids, "labels": labels, "attention_mask": attention_mask,
            "images": torch.stack([s["image"] for s in samples]),
            "has_image": torch.tensor([s["has_image"] for s in samples])}
