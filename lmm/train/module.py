"""The LightningModule of one training stage: which parts learn, the optimizer, and how the loss is normalised."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from lmm.constants import LOSS_NORMALIZATIONS, PARTS
from lmm.model.llava import LlavaModel
from lmm.train.sharding import clean_name


class LlavaLitModule(L.LightningModule):
    """Trains the parts of a LlavaModel named in `train` (align: connector; instruct: connector + llm).

    `loss_normalization="global_tokens"` (lmm's default): the loss of an optimizer step is the mean over every
    supervised token of that step, across micro-batches and ranks. Each micro-batch back-propagates the *sum* of its
    token losses, and before the optimizer step the gradients are rescaled by accumulate * world_size / (supervised
    tokens of the whole step): Lightning's automatic optimisation divides each micro-batch loss by
    `accumulate_grad_batches` and DDP/FSDP average over ranks, and the rescale undoes both.
    `loss_normalization="llava"`: LLaVA's objective (HF Trainer, spec §3.5): each micro-batch's mean over its own
    supervised tokens, averaged over micro-batches and ranks, so a 3-token micro-batch weighs as much as a 300-token
    one. A micro-batch without supervised tokens contributes 0 there (HF would give NaN).
    """

    def __init__(self, model: LlavaModel | Callable[[], LlavaModel], train: list[str], lr: float,
                 weight_decay: float = 0.0, warmup_ratio: float = 0.03, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, init_connector_from: str | None = None, gradient_checkpointing: bool = False,
                 fsdp: Callable[[LlavaModel, Any], None] | None = None, stage_name: str = "train",
                 loss_normalization: str = "global_tokens") -> None:
        super().__init__()
        unknown = set(train) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown part(s) to train {sorted(unknown)}; choose from {PARTS}")
        if loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(f"loss_normalization={loss_normalization!r}; choose from {LOSS_NORMALIZATIONS}")
        self.loss_normalization = loss_normalization
        self.model = model if isinstance(model, torch.nn.Module) else model()
        self.train_parts = list(train)
        self.lr, self.weight_decay, self.warmup_ratio = lr, weight_decay, warmup_ratio
        self.betas, self.eps = tuple(betas), eps
        self.fsdp, self.stage_name = fsdp, stage_name
        if init_connector_from:
            load_connector(self.model, init_connector_from)
        for part in PARTS:
            getattr(self.model, part).requires_grad_(part in self.train_parts)
            if part in self.train_parts:
                keep_fp32(getattr(self.model, part))
        if gradient_checkpointing and not getattr(fsdp, "activation_checkpointing", False):
            enable_hf_checkpointing(self.model.llm)  # under trainer=fsdp the sharding plan checkpoints instead
        self._tokens = torch.zeros((), dtype=torch.long)
        self._loss_sum = torch.zeros(())
        self._micro_means = torch.zeros(())  # loss_normalization="llava": sum of micro-batch means, and their count
        self._micro_batches = torch.zeros(())
        self.strict_loading = False  # checkpoints hold only the trainable weights; the frozen ones come from config
        self._sharded = False

    # ----------------------------------------------------------------------------------------------------- setup
    def configure_model(self) -> None:
        """Shard with FSDP2 when the strategy provides a device mesh (trainer=fsdp); once, however often called."""
        if self.fsdp is not None and getattr(self, "_device_mesh", None) is not None and not self._sharded:
            self.fsdp(self.model, self.device_mesh)
            self._sharded = True

    def parameter_counts(self) -> dict[str, int]:
        counts = {}
        for part in PARTS:
            params = list(getattr(self.model, part).parameters())
            counts[f"params/{part}"] = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        counts["params/trainable"] = trainable
        counts["params/frozen"] = sum(p.numel() for p in self.model.parameters()) - trainable
        counts["model/visual_tokens_per_image"] = self.model.num_visual_tokens
        return counts

    def on_fit_start(self) -> None:
        counts = self.parameter_counts()
        trained = ", ".join(self.train_parts)
        tokens = f"{counts['model/visual_tokens_per_image']} visual tokens per image"
        if self.model.tiled:
            tokens += " of the tile's size, more for a larger one (tiled; results.json has the mean trained on)"
        self.print(f"[lmm] training {trained}: {counts['params/trainable']:,} trainable, "
                   f"{counts['params/frozen']:,} frozen parameters; {tokens}")
        for logger in self.loggers:  # per stage: one W&B run holds both stages' counts
            logger.log_hyperparams({self.stage_name: {"counts": counts, "trainable_parts": self.train_parts}})

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, betas=self.betas, eps=self.eps,
                                      weight_decay=self.weight_decay)
        schedule = warmup_cosine(self.warmup_ratio, lambda: self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        # named per stage: both stages log into one W&B run, and their learning-rate curves must not mix
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": f"{self.stage_name}/lr"}}

    # ------------------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # a packed batch (data.<stage>.pack=true) carries per-sample positions: see lmm/data/packing.py
        positions = batch["position_ids"] if batch.get("packed") else None
        logits, spliced = self.model(batch["input_ids"], batch["attention_mask"], batch["images"], batch["labels"],
                                     position_ids=positions, image_sizes=batch.get("image_sizes"))
        loss_sum, tokens = self.model.token_loss(logits, spliced.labels)
        self._tokens = self._tokens.to(tokens.device) + tokens
        self._loss_sum = self._loss_sum.to(loss_sum.device) + loss_sum.detach().float()
        self.log(f"{self.stage_name}/seq_len", float(logits.shape[1]), on_step=True, batch_size=1)
        if self.loss_normalization == "llava":
            mean = loss_sum / tokens.clamp(min=1)
            self._micro_means = self._micro_means.to(mean.device) + mean.detach().float()
            self._micro_batches = self._micro_batches.to(mean.device) + 1
            return mean
        return loss_sum

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        strategy = self.trainer.strategy
        tokens = strategy.reduce(self._tokens.clone().float(), reduce_op="sum")
        token_mean = strategy.reduce(self._loss_sum.clone(), reduce_op="sum") / tokens.clamp(min=1.0)
        if self.loss_normalization == "global_tokens":
            accumulate = self.trainer.accumulate_grad_batches
            # A Python number: under FSDP2 the gradients are DTensors (shards), which refuse plain-tensor operands.
            scale = float(accumulate * self.trainer.world_size / tokens.clamp(min=1.0))
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.mul_(scale)
            objective = token_mean
        else:  # the gradients already are those of the mean of micro-batch means: log that mean
            micro_batches = strategy.reduce(self._micro_batches.clone(), reduce_op="sum").clamp(min=1.0)
            objective = strategy.reduce(self._micro_means.clone(), reduce_op="sum") / micro_batches
            self.log(f"{self.stage_name}/token_mean_loss", token_mean, on_step=True, batch_size=1,
                     rank_zero_only=True)
        self.log(f"{self.stage_name}/loss", objective, on_step=True, prog_bar=True, batch_size=1, rank_zero_only=True)
        self.log(f"{self.stage_name}/supervised_tokens", tokens, on_step=True, batch_size=1, rank_zero_only=True)
        for state in (self._tokens, self._loss_sum, self._micro_means, self._micro_batches):
            state.zero_()

    # --------------------------------------------------------------------------------------------- checkpoints
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed stage needs every trainable weight from its checkpoint (loading is not strict, because the
        frozen parts are not saved): one missing would silently restart from the configured weights."""
        state = checkpoint.get("state_dict")
        if state is None:  # FSDP2Strategy loaded a sharded checkpoint itself, and checked it there
            return
        trainable = [f"model.{clean_name(n)}" for n, p in self.model.named_parameters() if p.requires_grad]
        missing = [k for k in trainable if k not in state]
        if missing:
            raise KeyError(f"the checkpoint lacks {len(missing)} trainable weight(s) of stage {self.stage_name!r}, "
                           f"e.g. {missing[:3]}: it was written by another stage or model")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trainable weights: an align checkpoint is the connector, not a copy of the 7B LLM.

        Parameter names go through `clean_name`: activation-checkpoint wrappers (trainer=fsdp) add a prefix to
        them that state-dict keys (also ModelParallelStrategy's sharded ones) do not have.
        """
        trainable = {f"model.{clean_name(n)}" for n, p in self.model.named_parameters() if p.requires_grad}
        state = checkpoint.get("state_dict")
        if state is not None:
            checkpoint["state_dict"] = {k: v for k, v in state.items() if k in trainable}


def warmup_cosine(warmup_ratio: float, total_steps: Callable[[], float]) -> Callable[[int], float]:
    """LLaVA's schedule (HF `cosine` with `warmup_ratio`) as a LambdaLR factor: linear warmup over
    ceil(ratio * total) steps from 0, then a half cosine to 0 at `total`.

    The length is read at the first step that needs it, not when the optimizer is built: reading Lightning's
    `estimated_stepping_batches` in `configure_optimizers` sets up the data loaders before a resumed run's
    checkpoint is restored, and Lightning then never hands the loader its saved position (Lightning issue #20550):
    the resumed stage would replay its epoch from the start. Step 0 needs no length: its factor is 0 with warmup
    and 1 without. A plain function, so that LambdaLR keeps it out of the checkpoint.
    """
    resolved: list[int] = []

    def factor(step: int) -> float:
        if step == 0:
            return 0.0 if warmup_ratio > 0 else 1.0
        if not resolved:
            resolved.append(max(1, int(total_steps())))
        total = resolved[0]
        warmup = math.ceil(warmup_ratio * total)
        if step < warmup:
            return step / warmup
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))

    return factor


def keep_fp32(part: torch.nn.Module) -> None:
    """Trained weights are the optimizer's fp32 master copy, whatever dtype the checkpoint was stored in (Hugging
    Face loads e.g. Vicuna in fp16 unless told otherwise). Lower-precision compute comes from the trainer's precision
    or, under trainer=fsdp, from FSDP2's MixedPrecisionPolicy; frozen parts keep their dtype."""
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in part.parameters()):
        part.float()


def enable_hf_checkpointing(llm: torch.nn.Module) -> None:
    """Non-reentrant activation checkpointing of a Hugging Face model's layers (transformers 4.x and 5.x names)."""
    kwargs = {"use_reentrant": False}
    if hasattr(llm, "activation_checkpointing_enable"):
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def load_connector(model: LlavaModel, path: str) -> None:
    """Load connector weights written by the align stage (an explicit reference, never a guessed path)."""
    from safetensors.torch import load_file

    state = load_file(path)
    if hasattr(model.connector, "load_align_state"):  # tiled: the align stage's connector is its inner one
        model.connector.load_align_state(state)
        return
    missing, unexpected = model.connector.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit this connector: missing {missing}, unexpected {unexpected}")
