"""Batched LLaVA-1.5 inference in Lightning's predict loop: vicuna_v1 prompts, padded images, greedy decoding.

LLaVA's scripts answer one question at a time. Here a batch of prompts is spliced and left-padded inside
LlavaModel.generate (KV cache on), which gives the same greedy answers (tests/test_eval_inference.py) several times
faster. Questions are sorted by prompt length so a batch carries little padding; each answer is keyed by the
question's uid, so order, sharding and padding duplicates never mix answers up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lmm.constants import IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX
from lmm.data.images import batch_images
from lmm.data.workers import worker_context
from lmm.eval.tasks import Question
from lmm.model.build import part_dtypes
from lmm.model.llava import LlavaModel
from lmm.model.preprocess import ImageTransform


@dataclass(frozen=True)
class Decoding:
    """LLaVA-1.5's decoding protocol (temperature 0 = greedy, one beam, KV cache) with the benchmark's budget."""

    max_new_tokens: int = 128
    do_sample: bool = False
    num_beams: int = 1
    use_cache: bool = True

    def kwargs(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample, "num_beams": self.num_beams,
                "use_cache": self.use_cache}


def prompt_text(ids: list[int], tokenizer: Any) -> str:
    """The exact prompt the model saw for one question, decoded piece by piece around the image token."""
    pieces, cur = [], []
    for i in ids:
        if i == IMAGE_TOKEN_INDEX:
            pieces.append(cur)
            cur = []
        else:
            cur.append(i)
    pieces.append(cur)
    return IMAGE_PLACEHOLDER.join(tokenizer.decode(p, skip_special_tokens=False) for p in pieces)


BLANK = (128, 128, 128)  # what a blind evaluation shows in place of every image


class QuestionDataset(Dataset):
    """Tokenised prompts (built up front, they are cheap) and images (loaded lazily, in the workers).

    `blind`: every image is replaced by a plain grey one of the same size, the control that shows how much of a
    score the question text alone earns (a model that stays at chance blind has to look to score).
    """

    def __init__(self, questions: Sequence[Question], template: Any, tokenizer: Any, transform: ImageTransform,
                 sort_by_length: bool = True, blind: bool = False) -> None:
        self.questions = list(questions)
        self.transform = transform
        self.blind = blind
        self.prompts = [template.prompt_ids(q.text, tokenizer, has_image=q.image is not None) for q in self.questions]
        order = list(range(len(self.questions)))
        if sort_by_length:  # longest first: similar lengths share a batch, and memory trouble shows up at once
            order.sort(key=lambda i: (-len(self.prompts[i]), i))
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict[str, Any]:
        k = self.order[i]
        q = self.questions[k]
        img = q.load_image()
        if img is not None and self.blind:
            img = Image.new("RGB", img.size, BLANK)
        return {"uid": q.uid, "input_ids": self.prompts[k],
                "image": self.transform(img) if img is not None else None,
                "image_size": (img.height, img.width) if img is not None else None}


def collate(items: list[dict[str, Any]], pad_id: int, image_size: int,
            blank: Callable[[], tuple[torch.Tensor, tuple[int, int]]] | None = None) -> dict[str, Any]:
    """Right-pad the ids (generate re-pads on the left after splicing); text-only items get a dummy image (tiled,
    input=hd/anyres: a blank tile-sized image's tiles, and `image_sizes` beside the concatenated tiles)."""
    longest = max(len(x["input_ids"]) for x in items)
    ids = torch.full((len(items), longest), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, x in enumerate(items):
        ids[i, : len(x["input_ids"])] = torch.tensor(x["input_ids"])
        mask[i, : len(x["input_ids"])] = 1
    has_image = [x["image"] is not None for x in items]
    images, sizes = None, None
    if any(has_image):
        dummy, dummy_size = blank() if blank is not None else (torch.zeros(3, image_size, image_size), None)
        images, sizes = batch_images([x["image"] if x["image"] is not None else dummy for x in items],
                                     [x["image_size"] or dummy_size for x in items] if blank is not None else None)
    return {"uid": torch.tensor([x["uid"] for x in items]), "input_ids": ids, "attention_mask": mask,
            "images": images, "image_sizes": sizes}


class _Collate:
    """Picklable collate function (DataLoader workers)."""

    def __init__(self, pad_id: int, image_size: int, blank: Callable | None = None) -> None:
        self.pad_id, self.image_size, self.blank = pad_id, image_size, blank

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate(items, self.pad_id, self.image_size, self.blank)


def make_loader(dataset: QuestionDataset, tokenizer: Any, batch_size: int, num_workers: int = 0) -> DataLoader:
    """A sequential loader over the length-sorted dataset (Lightning shards it across ranks in predict)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=_Collate(tokenizer.pad_token_id, dataset.transform.image_size,
                                          getattr(dataset.transform, "blank", None)),
                      persistent_workers=False, multiprocessing_context=worker_context(num_workers))


class EvalModule(L.LightningModule):
    """Wraps a LlavaModel for Trainer.predict: each step returns [(uid, answer text)] for its batch."""

    def __init__(self, model: LlavaModel, tokenizer: Any, stop_token_ids: Sequence[int], decoding: Decoding) -> None:
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.stop_token_ids, self.decoding = list(stop_token_ids), decoding
        self.dtypes: dict[str, str] | None = None  # the parameters' dtypes while generating (set by predict_step)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[tuple[int, str]]:
        self.model.eval()
        if self.dtypes is None:  # after the Trainer's setup (a "16-true" precision plugin converts the model there)
            self.dtypes = part_dtypes(self.model)
        images = batch["images"]
        if images is not None:
            images = images.to(next(self.model.encoder.parameters()).dtype)
        out = self.model.generate(batch["input_ids"], batch["attention_mask"], images,
                                  image_sizes=batch.get("image_sizes"), eos_token_id=self.stop_token_ids,
                                  pad_token_id=self.tokenizer.pad_token_id,
                                  **self.decoding.kwargs())
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [(int(u), t.strip()) for u, t in zip(batch["uid"].tolist(), texts, strict=True)]


def gather_answers(local: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """All ranks' (uid, text) pairs on every rank (a no-op in one process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        parts: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, local)
        return [pair for part in parts for pair in part]
    return list(local)


def merge_answers(pairs: list[tuple[int, str]], num_questions: int) -> list[str]:
    """Texts in question order from (uid, text) pairs: duplicates (a padding DistributedSampler repeats items to
    even out the ranks) are dropped, and a question answered twice differently or not at all is an error."""
    texts: dict[int, str] = {}
    for uid, text in pairs:
        if uid in texts and texts[uid] != text:
            raise RuntimeError(f"question uid {uid} was answered twice, differently: {texts[uid]!r} vs {text!r}")
        texts[uid] = text
    missing = [u for u in range(num_questions) if u not in texts]
    if missing:
        raise RuntimeError(f"{len(missing)} questions got no answer (first uids: {missing[:10]})")
    return [texts[u] for u in range(num_questions)]


def broadcast_from_rank0(obj: Any) -> Any:
    """Rank 0's object on every rank (a no-op in one process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def predict_answers(trainer: L.Trainer, module: EvalModule, loader: DataLoader, num_questions: int) -> list[str]:
    """Run Trainer.predict over the loader (sharded by Lightning across ranks) and return texts in question order."""
    batches = trainer.predict(module, dataloaders=loader, return_predictions=True) or []
    local = [pair for batch in batches for pair in batch]
    return merge_answers(gather_answers(local), num_questions)


def generate_one_by_one(model: LlavaModel, tokenizer: Any, template: Any, transform: ImageTransform,
                        questions: Sequence[Question], decoding: Decoding) -> list[str]:
    """LLaVA's reference loop: one question at a time, batch size 1 (what the batched path must reproduce)."""
    texts = []
    model.eval()
    for q in questions:
        ids = torch.tensor([template.prompt_ids(q.text, tokenizer, has_image=q.image is not None)])
        img = q.load_image()
        tiled = img is not None and hasattr(transform, "blank")
        images = None if img is None else transform(img) if tiled else transform(img)[None]
        sizes = torch.tensor([[img.height, img.width]]) if tiled else None
        out = model.generate(ids, torch.ones_like(ids), images, image_sizes=sizes,
                             eos_token_id=template.stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id,
                             **decoding.kwargs())
        texts.append(tokenizer.decode(out[0], skip_special_tokens=True).strip())
    return texts
