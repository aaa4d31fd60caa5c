"""From a stored sample to a training sample: format prompt, template, masking, image decode and transform, checks.

Every way a sample can be unusable ends here as a SampleError naming the file, the record id and the reason (strict
mode) or as a `Rejected` marker that the collator drops and counts, after its line went to the rejects file
(lenient mode). Nothing is dropped without a trace.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from lmm.constants import IGNORE_INDEX
from lmm.data.formats import FormatPrompt
from lmm.data.images import batch_images
from lmm.data.records import Record, parse_record, record_problem
from lmm.data.rejects import ON_ERROR, RejectLog, SampleError, reason_kind
from lmm.data.sources.store import StoreReader
from lmm.data.templates import TokenizationMismatch, truncate

REJECTED = "rejected"


class SampleBuilder:
    """Turns (record, image bytes) into the tensors of one sample; raises SampleError or returns a Rejected dict.

    `max_text_length` is the context left for text once the image's visual tokens are in: a longer sample is an
    error (strict), a counted skip (lenient), or, with `truncate=True`, cut as LLaVA does (counted as truncated).
    """

    def __init__(self, template: Any, tokenizer: PreTrainedTokenizerBase, image_transform: Callable,
                 max_text_length: int, on_error: str = "error", truncate: bool = False,
                 rejects: RejectLog | None = None, text_only_extra: int = 0) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.template, self.tokenizer, self.image_transform = template, tokenizer, image_transform
        self.max_text_length, self.on_error, self.truncate, self.rejects = max_text_length, on_error, truncate, rejects
        self.text_only_extra = text_only_extra  # a text-only sample may also use the positions of the visual tokens

    def build(self, rec: Record, image: bytes | None, fmt: FormatPrompt | None, source: str, where: str,
              key: tuple[int, int] | None = None) -> dict[str, Any]:
        try:
            return self._build(rec, image, fmt, source, f"{where} (id {rec.id!r})")
        except SampleError as e:
            if self.on_error == "error":
                raise
            if self.rejects is not None:
                self.rejects.write({"file": where, "id": rec.id, "source": source, "reason": e.reason,
                                    "kind": e.kind, "stage": "load"})
            return {REJECTED: True, "kind": e.kind, "source": source, "id": rec.id, "key": key}

    def _build(self, rec: Record, image: bytes | None, fmt: FormatPrompt | None, source: str,
               where: str) -> dict[str, Any]:
        turns = rec.conversations
        if fmt is not None:
            try:
                turns = fmt(turns)
            except ValueError as e:
                raise SampleError(where, rec.id, str(e), "malformed conversation") from e
        rec = Record(rec.id, rec.image, turns)
        reason = record_problem(rec)
        if reason is not None:
            raise SampleError(where, rec.id, reason, reason_kind(reason))
        has_image = rec.image is not None
        try:
            encoded = self.template.encode(rec.conversations, self.tokenizer, has_image=has_image)
        except TokenizationMismatch as e:
            raise SampleError(where, rec.id, str(e), "tokenization mismatch") from e
        except ValueError as e:
            raise SampleError(where, rec.id, f"template refuses the conversation: {e}", "malformed conversation") \
                from e
        truncated = False
        limit = self.max_text_length + (0 if has_image else self.text_only_extra)
        picture, visual = None, None
        if has_image and hasattr(self.image_transform, "visual_tokens"):  # tiled: the count depends on the image
            picture = decode_image(image, where, rec.image)
            visual = int(self.image_transform.visual_tokens((picture.height, picture.width)))
            limit = self.max_text_length + self.text_only_extra + 1 - visual  # = max_length - visual: never cut it
        if len(encoded.input_ids) > limit:
            if not self.truncate:
                raise SampleError(where, rec.id, f"sample is longer than the context: {len(encoded.input_ids)} text "
                                  f"tokens > {limit} (the model's max_length less the visual tokens)", "too long")
            encoded, truncated = truncate(encoded, limit), True
        out = {"id": rec.id, "input_ids": torch.tensor(encoded.input_ids), "labels": torch.tensor(encoded.labels),
               "has_image": has_image, "source": source, "truncated": truncated}
        if has_image:
            picture = picture or decode_image(image, where, rec.image)
            out["image"] = self.image_transform(picture)
            if visual is not None:
                out["image_size"], out["visual_tokens"] = (picture.height, picture.width), visual
        elif hasattr(self.image_transform, "blank"):  # text-only samples carry a blank image so every batch has
            out["image"], out["image_size"] = self.image_transform.blank()  # pixels (see LlavaModel.splice)
            out["visual_tokens"] = 0
        else:
            size = self.image_transform.image_size
            out["image"] = torch.zeros(3, size, size)
        return out


def decode_image(data: bytes | None, where: str, rel: str | None) -> Any:
    """Decode stored image bytes to RGB, turning every failure into a SampleError naming file, record and image."""
    from PIL import Image

    if not data:
        raise SampleError(where, None, f"image {rel!r}: no image bytes stored", "corrupt image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise SampleError(where, None, f"image {rel!r} cannot be decoded: {e}", "corrupt image") from e


class MixtureDataset(Dataset):
    """Map-style view of several converted sources; an item key is (source number, sample number in the source)."""

    def __init__(self, readers: Sequence[StoreReader], names: Sequence[str], formats: Sequence[FormatPrompt | None],
                 builder: SampleBuilder) -> None:
        self.readers, self.names, self.formats, self.builder = list(readers), list(names), list(formats), builder

    def __len__(self) -> int:
        return sum(len(r) for r in self.readers)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        s, i = int(key[0]), int(key[1])
        reader = self.readers[s]
        where = f"{reader.index['source']['records']} [{reader.part_path(i)}, sample {i}]"
        raw, image = reader.read(i)
        try:
            rec = parse_record(raw, where, i)
        except ValueError as e:
            raise SampleError(where, raw.get("id"), str(e), "invalid record") from e
        return self.builder.build(rec, image, self.formats[s], self.names[s], where, key=(s, i))


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
            **image_fields(samples),
            "has_image": torch.tensor([s["has_image"] for s in samples]),
            "sample_tokens": torch.tensor([int((s["labels"] != IGNORE_INDEX).sum()) for s in samples])}


def image_fields(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """`images` (and, tiled, `image_sizes` and each sample's `visual_tokens`, 0 without an image) of samples."""
    images, sizes = batch_images([s["image"] for s in samples],
                                 [s["image_size"] for s in samples] if "image_size" in samples[0] else None)
    if sizes is None:
        return {"images": images}
    return {"images": images, "image_sizes": sizes,
            "visual_tokens": torch.tensor([int(s["visual_tokens"]) for s in samples])}


def visual_cost(sample: dict[str, Any], visual_tokens: int) -> int:
    """Model positions of a sample: its ids, with the placeholder standing for its image's visual tokens (its own
    count when tiled, else the model's fixed `visual_tokens`)."""
    if not sample["has_image"]:
        return len(sample["input_ids"])
    return len(sample["input_ids"]) + int(sample.get("visual_tokens", visual_tokens)) - 1


class Collator:
    """Drops and counts rejected samples, then pads (or packs) the rest; reports the padding of the micro-batch.

    Padding is counted in model positions: an image placeholder stands for `visual_tokens` positions. A micro-batch
    whose samples were all rejected, or that got none (a rank's share of an epoch's last step with fewer samples than
    micro-batches, see lmm.data.mixture), becomes one 1-token row without loss (source ""), so every rank still takes
    its step.
    """

    def __init__(self, pad_token_id: int, image_size: int, visual_tokens: int = 1, pack_length: int | None = None,
                 blank: Callable[[], tuple[torch.Tensor, tuple[int, int]]] | None = None):
        self.pad_token_id, self.image_size, self.visual_tokens = pad_token_id, image_size, visual_tokens
        self.pack_length, self.blank = pack_length, blank  # blank: a tiled transform's blank image (tiles, size)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        kept = [x for x in items if not x.get(REJECTED)]
        rejected = [x["kind"] for x in items if x.get(REJECTED)]
        if not kept:
            kept = [{"id": "", "source": "", "input_ids": torch.tensor([self.pad_token_id]),
                     "labels": torch.tensor([IGNORE_INDEX]), "has_image": False, "truncated": False,
                     "image": torch.zeros(3, self.image_size, self.image_size)}]
            if self.blank is not None:
                kept[0]["image"], kept[0]["image_size"] = self.blank()
                kept[0]["visual_tokens"] = 0
        if self.pack_length:
            from lmm.data.packing import pack

            batch = pack(kept, self.pad_token_id, self.pack_length, self.visual_tokens)
        else:
            batch = collate(kept, self.pad_token_id)
            cost = [visual_cost(s, self.visual_tokens) for s in kept]
            batch["positions"] = torch.tensor([len(cost) * max(cost), sum(cost)])
        batch["rejected"] = rejected
        batch["truncated"] = torch.tensor([bool(s.get("truncated")) for s in kept])
        return batch


def padding_fraction(batch: dict[str, Any]) -> float:
    """Share of the micro-batch's model positions that are padding."""
    total, real = (int(x) for x in batch["positions"])
    return (total - real) / max(total, 1)
