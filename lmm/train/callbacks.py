"""Callbacks: sample generations written to the run folder and to W&B, a loss record and the steps and samples
trained for the stage summary, throughput."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from lmm.data.images import batch_images, load_image
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
        ids, images, sizes, pil_images = [], [], [], []
        blank = getattr(self.image_transform, "blank", None)  # tiled (input=hd/anyres): tiles + size
        for rec, image_root in self.examples:
            has_image = rec.image is not None
            question = rec.conversations[0].value
            ids.append(self.template.prompt_ids(question, self.tokenizer, has_image=has_image))
            if has_image:
                img = load_image(resolve_image_path(image_root, rec.image))
                pil_images.append(img)
                images.append(self.image_transform(img))
                sizes.append((img.height, img.width))
            elif blank is not None:
                pil_images.append(None)
                image, size = blank()
                images.append(image)
                sizes.append(size)
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
        pixels, image_sizes = batch_images(images, sizes if blank is not None else None)
        with gathered(model):
            out = model.generate(input_ids.to(device), mask.to(device), pixels.to(device),
                                 image_sizes=None if image_sizes is None else image_sizes.to(device),
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


def real_samples(batch: dict[str, Any]) -> int:
    """Samples a micro-batch trains on: not the loss-free filler row of a micro-batch left without samples (an
    all-rejected one, or a rank's share of a last step with fewer samples than micro-batches), whose source is ""."""
    sources = batch.get("sources")
    if sources is None:  # a batch not from lmm's Collator: every row is a sample
        return int(batch["input_ids"].shape[0])
    return sum(1 for source in sources if source)


class TrainedTally(L.Callback):
    """Optimizer steps and samples a stage trained on, summed over all ranks at every optimizer step.

    A step is counted when `trainer.global_step` moves, so the smaller last step of an epoch (Lightning steps on an
    epoch's last micro-batch with its accumulation incomplete) counts like any other. The totals are part of the
    checkpoint: a resumed stage keeps counting where it stopped (from a checkpoint written without them, counting
    starts at its step: `counted_from_step`). `summary()` is what the stage's results record.
    """

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.steps = self.samples = self.rejected = 0
        self.last_step_samples, self.counted_from_step = 0, 0
        self.smallest_step_samples: int | None = None
        self.scheduled_steps: int | None = None
        self.epoch_plan: dict[str, Any] | None = None
        self.images = self.visual_tokens = 0  # tiled input (input=hd/anyres): images trained on, their visual tokens
        self._pending = torch.zeros(4, dtype=torch.float64)  # this rank's (samples, rejected, images, visual tokens)
        self._seen_step: int | None = None

    @property
    def state_key(self) -> str:
        return f"TrainedTally[{self.stage}]"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._seen_step = trainer.global_step
        if self.steps == 0:  # a fresh stage, or one resumed from a checkpoint without this tally
            self.counted_from_step = trainer.global_step
        self._pending.zero_()
        self.scheduled_steps = int(trainer.estimated_stepping_batches)
        schedule = getattr(trainer.datamodule, "schedule", None)
        self.epoch_plan = schedule() if callable(schedule) else None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._pending[0] += real_samples(batch)
        self._pending[1] += len(batch.get("rejected", []))
        if "visual_tokens" in batch:  # each image's own count; text-only samples and blank fillers count 0
            self._pending[2] += int((batch["visual_tokens"] > 0).sum())
            self._pending[3] += int(batch["visual_tokens"].sum())
        if self._seen_step is None:
            self._seen_step = trainer.global_step
        if trainer.global_step == self._seen_step:  # still accumulating (the same on every rank)
            return
        pending = self._pending.to(pl_module.device)
        if trainer.world_size > 1:
            pending = trainer.strategy.reduce(pending, reduce_op="sum")
        samples, rejected, images, visual = (int(x) for x in pending.cpu().tolist())
        self.images, self.visual_tokens = self.images + images, self.visual_tokens + visual
        self.steps += trainer.global_step - self._seen_step
        self.samples += samples
        self.rejected += rejected
        self.last_step_samples = samples + rejected
        if self.smallest_step_samples is None or samples + rejected < self.smallest_step_samples:
            self.smallest_step_samples = samples + rejected
        self._seen_step = trainer.global_step
        self._pending.zero_()

    def summary(self) -> dict[str, Any]:
        """Steps and samples trained (rejected: loaded but unusable under on_error=skip, so not trained on), the
        samples of the last and of the smallest step (trained + rejected), the steps the learning-rate schedule was
        built for (`estimated_stepping_batches`), and the epoch plan they should match; with tiled input, the mean
        visual tokens per image trained on (they vary per image)."""
        out = {"optimizer_steps": self.steps, "samples": self.samples, "rejected": self.rejected,
               "last_step_samples": self.last_step_samples, "smallest_step_samples": self.smallest_step_samples,
               "scheduled_steps": self.scheduled_steps, "counted_from_step": self.counted_from_step,
               "epoch_plan": self.epoch_plan}
        if self.images:
            out["visual_tokens_per_image"] = round(self.visual_tokens / self.images, 1)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "samples": self.samples, "rejected": self.rejected,
                "last_step_samples": self.last_step_samples, "smallest_step_samples": self.smallest_step_samples,
                "counted_from_step": self.counted_from_step, "images": self.images,
                "visual_tokens": self.visual_tokens}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps, self.samples = int(state_dict["steps"]), int(state_dict["samples"])
        self.rejected, self.last_step_samples = int(state_dict["rejected"]), int(state_dict["last_step_samples"])
        self.smallest_step_samples = state_dict["smallest_step_samples"]
        self.counted_from_step = int(state_dict.get("counted_from_step", 0))
        self.images, self.visual_tokens = int(state_dict.get("images", 0)), int(state_dict.get("visual_tokens", 0))


class Throughput(L.Callback):
    """Samples/s and tokens/s (text + visual tokens the LLM processes) over all ranks, logged per stage.

    Measured between logging points over whole optimizer steps, so start-up and the first batch's data loading are
    not averaged in.
    """

    def __init__(self, stage: str, visual_tokens_per_image: int | None = None, every_n_steps: int = 5) -> None:
        self.stage, self.visual, self.every = stage, visual_tokens_per_image, every_n_steps
        self._samples = self._tokens = 0
        self._t0: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.visual is None:  # from the model, unless given: the configs need not repeat it
            self.visual = pl_module.model.num_visual_tokens

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        import time

        if self._t0 is None:  # start timing after the first micro-batch
            self._t0 = time.perf_counter()
            return
        n_images = int(batch["has_image"].sum())
        self._samples += real_samples(batch)
        if "visual_tokens" in batch:  # tiled (input=hd/anyres): each image's own count
            self._tokens += int(batch["attention_mask"].sum()) + int(batch["visual_tokens"].sum()) - n_images
        else:
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
