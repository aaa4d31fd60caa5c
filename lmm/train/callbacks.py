"""Callbacks: sample generations written to the run folder and to W&B, and a loss record for the stage summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from lmm.data.images import load_image
from lmm.data.records import Record, resolve_image_path
from lmm.train.sharding import gathered


class SampleGenerations(L.Callback):
    """At the end of a stage, answer a few fixed training prompts and keep them beside the ground truth.

    The prompt is the record's first human turn in the stage's template; the generation is greedy.
    """

    def __init__(self, examples: list[tuple[Record, Path]], template: Any, tokenizer: Any, image_transform: Any,
                 out_path: Path, stage: str, max_new_tokens: int = 48) -> None:
        self.examples, self.template = examples, template
        self.tokenizer, self.image_transform, self.out_path = tokenizer, image_transform, Path(out_path)
        self.stage, self.max_new_tokens = stage, max_new_tokens

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = self.generate(pl_module)
        if trainer.is_global_zero:
            self.out_path.parent.mkdir(parents=True, exist_ok=True)
            self.out_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            self._log_table(trainer, rows)

    def generate(self, pl_module: L.LightningModule) -> list[dict[str, Any]]:
        model, device = pl_module.model, pl_module.device
        ids, images, pil_images = [], [], []
        for rec, image_root in self.examples:
            has_image = rec.image is not None
            question = rec.conversations[0].value
            ids.append(self.template.prompt_ids(question, self.tokenizer, has_image=has_image))
            if has_image:
                img = load_image(resolve_image_path(image_root, rec.image))
                pil_images.append(img)
                images.append(self.image_transform(img))
            else:
                pil_images.append(None)
                images.append(torch.zeros(3, self.image_transform.image_size, self.image_transform.image_size))
        longest = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), longest), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)], mask[i, : len(x)] = torch.tensor(x), 1
        was_training = model.training
        model.eval()
        # trainer=fsdp: gather the root unit's weights (embeddings, head, connector); all ranks generate in lockstep
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized() and \
            torch.distributed.get_world_size() > 1
        with gathered(model):
            out = model.generate(input_ids.to(device), mask.to(device), torch.stack(images).to(device),
                                 max_new_tokens=self.max_new_tokens, do_sample=False,
                                 eos_token_id=self.template.stop_token_ids(self.tokenizer),
                                 pad_token_id=self.tokenizer.pad_token_id, synced_gpus=distributed)
        model.train(was_training)
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        self._pil = pil_images
        return [{"stage": self.stage, "id": rec.id, "image": rec.image, "prompt": rec.conversations[0].value,
                 "reference": rec.conversations[1].value, "generation": text.strip()}
                for (rec, _), text in zip(self.examples, texts, strict=True)]

    @rank_zero_only
    def _log_table(self, trainer: L.Trainer, rows: list[dict[str, Any]]) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                columns = ["id", "image", "prompt", "reference", "generation"]
                data = [[r["id"], wandb.Image(img) if img is not None else None, r["prompt"], r["reference"],
                         r["generation"]] for r, img in zip(rows, self._pil, strict=True)]
                logger.experiment.log({f"{self.stage}/samples": wandb.Table(columns=columns, data=data)})


class LossRecord(L.Callback):
    """Keeps the logged loss of every optimizer step so the stage summary can say whether it fell."""

    def __init__(self, key: str) -> None:
        self.key, self.losses = key, []
        self.start_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step = trainer.global_step  # > 0 when the stage resumed from a checkpoint

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        value = trainer.callback_metrics.get(self.key)
        if value is not None and (not self.losses or self.losses[-1][0] != trainer.global_step):
            self.losses.append((trainer.global_step, float(value)))


class Throughput(L.Callback):
    """Samples/s and tokens/s (text + visual tokens the LLM processes) over all ranks, logged per stage.

    Measured between logging points over whole optimizer steps, so start-up and the first batch's data loading are
    not averaged in.
    """

    def __init__(self, stage: str, visual_tokens_per_image: int, every_n_steps: int = 5) -> None:
        self.stage, self.visual, self.every = stage, visual_tokens_per_image, every_n_steps
        self._samples = self._tokens = 0
        self._t0: float | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        import time

        if self._t0 is None:  # start timing after the first micro-batch
            self._t0 = time.perf_counter()
            return
        n_images = int(batch["has_image"].sum())
        self._samples += batch["input_ids"].shape[0]
        self._tokens += int(batch["attention_mask"].sum()) + n_images * (self.visual - 1)
        if (batch_idx + 1) % (self.every * trainer.accumulate_grad_batches):
            return
        elapsed = time.perf_counter() - self._t0
        totals = torch.tensor([self._samples, self._tokens], dtype=torch.float64, device=pl_module.device)
        totals = trainer.strategy.reduce(totals, reduce_op="sum")
        pl_module.log_dict({f"{self.stage}/samples_per_sec": float(totals[0]) / elapsed,
                            f"{self.stage}/tokens_per_sec": float(totals[1]) / elapsed}, on_step=True,
                           batch_size=1, rank_zero_only=True)
        self._samples = self._tokens = 0
        self._t0 = time.perf_counter()
