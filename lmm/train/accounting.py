"""What the model actually saw: samples and supervised tokens per source, rejects, truncations and padding.

A mixture's weights say what was asked for; this callback logs what was delivered, summed over all ranks at every
optimizer step, under `<stage>/data/<source>/samples` and `<stage>/data/<source>/supervised_tokens` (cumulative),
`<stage>/data/rejected`, `<stage>/data/truncated` (cumulative) and `<stage>/data/pad_fraction` (over the logging
window). The totals are part of the checkpoint, so a resumed run keeps counting where it stopped.

Records a lenient conversion skipped never reach a batch, so they are logged too, from the converted sources'
indexes: `<stage>/data/<source>/rejected_at_conversion` and `.../rejected_at_conversion/<reason>` per source
(e.g. `missing_image`, `image_placeholders`), and `<stage>/data/rejected_at_conversion` over all sources. A run
that lost data before its first step shows it beside what it trained on.

Records the conversion repaired rather than rejected (LLaVA's own fixes, lmm.data.records.repair_record: a first
turn not from human is dropped) are trained on, and logged apart from the rejects:
`<stage>/data/<source>/repaired_at_conversion[/<reason>]` (e.g. `dropped_first_turn_not_human`) and
`<stage>/data/repaired_at_conversion`. They do not count toward `max_reject_fraction`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch


class DataAccounting(L.Callback):
    """Counts per source from the batches' `sources` and `sample_tokens` (supervised tokens: labels != -100)."""

    def __init__(self, stage: str, sources: Sequence[str] | None = None, log_every_n_steps: int = 5,
                 conversion_rejects: Mapping[str, Mapping[str, int]] | None = None,
                 max_reject_fraction: float | None = None, min_samples_for_check: int = 200,
                 conversion_repairs: Mapping[str, Mapping[str, int]] | None = None) -> None:
        self.stage, self.every = stage, max(1, int(log_every_n_steps))
        # None: the trainer's datamodule's `max_reject_fraction` (LlavaDataModule: its policy's), if it has one
        self.max_reject_fraction, self.min_samples_for_check = max_reject_fraction, min_samples_for_check
        self.sources = list(sources) if sources is not None else None
        # per source, per reason: records its conversion skipped (default: asked of the trainer's datamodule)
        self.conversion_rejects = {k: dict(v) for k, v in conversion_rejects.items()} \
            if conversion_rejects is not None else None
        # per source, per reason: records its conversion repaired and kept (default: read from the datamodule)
        self.conversion_repairs = {k: dict(v) for k, v in conversion_repairs.items()} \
            if conversion_repairs is not None else None
        self.totals: torch.Tensor | None = None  # [S + 1, 2]: per source (samples, tokens); last row: rejected, trunc.
        self._pending: torch.Tensor | None = None
        self._positions = torch.zeros(2, dtype=torch.float64)  # (all positions, real positions) since the last log
        self._loaded: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return f"DataAccounting[{self.stage}]"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.sources is None:
            self.sources = list(getattr(trainer.datamodule, "source_names", None) or [])
        if self.conversion_rejects is None:
            by_reason = getattr(trainer.datamodule, "conversion_rejects_by_reason", None)
            self.conversion_rejects = by_reason() if callable(by_reason) else {}
        if self.conversion_repairs is None:
            self.conversion_repairs = conversion_repairs_of(trainer.datamodule)
        if self.max_reject_fraction is None:
            self.max_reject_fraction = getattr(trainer.datamodule, "max_reject_fraction", None)
        self._index = {name: i for i, name in enumerate(self.sources)}
        if self.totals is None:
            self.totals = torch.zeros(len(self.sources) + 1, 2, dtype=torch.float64)
        self._pending = torch.zeros_like(self.totals)
        if self._loaded is not None:
            self._restore(self._loaded)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._pending is None:
            self.setup(trainer, pl_module, "fit")
        tokens = batch["sample_tokens"].tolist() if "sample_tokens" in batch else [0] * len(batch["sources"])
        for source, n in zip(batch["sources"], tokens, strict=True):
            i = self._index.get(source)
            if i is None:  # the filler row of an all-rejected micro-batch, or an unknown source
                continue
            self._pending[i, 0] += 1
            self._pending[i, 1] += n
        self._pending[-1, 0] += len(batch.get("rejected", []))
        if "truncated" in batch:
            self._pending[-1, 1] += int(torch.as_tensor(batch["truncated"]).sum())
        if "positions" in batch:
            self._positions += torch.as_tensor(batch["positions"], dtype=torch.float64).cpu()
        step_done = (batch_idx + 1) % trainer.accumulate_grad_batches == 0 or \
            batch_idx + 1 == trainer.num_training_batches
        if not step_done:
            return
        pending = self._pending.to(pl_module.device)
        reduced = trainer.strategy.reduce(pending, reduce_op="sum") if trainer.world_size > 1 else pending
        self.totals += reduced.cpu()
        self._pending.zero_()
        self._check_rejects()
        if trainer.global_step % self.every == 0:
            self._log(trainer, pl_module)

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        positions = self._positions.to(pl_module.device)
        if trainer.world_size > 1:
            positions = trainer.strategy.reduce(positions, reduce_op="sum")
        metrics = self.metrics()
        total, real = float(positions[0]), float(positions[1])
        if total > 0:
            metrics[f"{self.stage}/data/pad_fraction"] = (total - real) / total
        self._positions.zero_()
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1, rank_zero_only=True)

    def _check_rejects(self) -> None:
        """Stop a lenient run whose samples are mostly rejected at load time (e.g. a template that mismatches the
        tokenizer on every sample): skipping is for the odd bad record, not for training on filler rows. Every rank
        sees the same reduced totals, so all of them stop together."""
        if self.max_reject_fraction is None:
            return
        rejected, seen = float(self.totals[-1, 0]), float(self.totals[:-1, 0].sum())
        if rejected + seen < self.min_samples_for_check:
            return
        fraction = rejected / (rejected + seen)
        if fraction > self.max_reject_fraction:
            raise RuntimeError(f"{self.stage}: {int(rejected)} of {int(rejected + seen)} samples were rejected while "
                               f"loading ({fraction:.1%} > max_reject_fraction={self.max_reject_fraction}); their "
                               "reasons are in the stage folder's rejects.jsonl. Fix the data or template, or raise "
                               f"data.{self.stage}.policy.max_reject_fraction")

    def metrics(self) -> dict[str, float]:
        """The cumulative counts as metric names and values (what is logged; also handy for summaries)."""
        out: dict[str, float] = {}
        if self.totals is None:
            return out
        all_samples = float(self.totals[:-1, 0].sum())
        for name, i in self._index.items():
            out[f"{self.stage}/data/{name}/samples"] = float(self.totals[i, 0])
            out[f"{self.stage}/data/{name}/supervised_tokens"] = float(self.totals[i, 1])
            out[f"{self.stage}/data/{name}/share"] = float(self.totals[i, 0]) / max(all_samples, 1.0)
        out[f"{self.stage}/data/rejected"] = float(self.totals[-1, 0])
        out[f"{self.stage}/data/truncated"] = float(self.totals[-1, 1])
        out.update(self.conversion_metrics())
        return out

    def conversion_metrics(self) -> dict[str, float]:
        """Records skipped, and records repaired and kept, when the sources were converted, per source and reason
        (constant during a run)."""
        sources = self.sources or []
        return {**_per_source(self.stage, "rejected_at_conversion", sources, self.conversion_rejects or {}),
                **_per_source(self.stage, "repaired_at_conversion", sources, self.conversion_repairs or {})}

    def state_dict(self) -> dict[str, Any]:
        if self.totals is None:
            return {}
        return {"sources": list(self.sources or []), "totals": self.totals.tolist()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        self._loaded = state_dict
        if self.totals is not None:
            self._restore(state_dict)

    def _restore(self, state: dict[str, Any]) -> None:
        """Totals by source name, so a source added to the mixture starts at zero rather than misaligned."""
        saved = dict(zip(state["sources"], state["totals"][:-1], strict=True))
        for name, i in self._index.items():
            if name in saved:
                self.totals[i] = torch.tensor(saved[name], dtype=torch.float64)
        self.totals[-1] = torch.tensor(state["totals"][-1], dtype=torch.float64)
        self._loaded = None


def conversion_repairs_of(datamodule: Any) -> dict[str, dict[str, int]]:
    """{source: {reason: count}} of the records each source's conversion repaired, from the datamodule's
    `conversion_repairs_by_reason()` if it has one, else from the `repaired_by_reason` of its readers' indexes
    (LlavaDataModule: `readers`, set up before the callbacks, beside `source_names`)."""
    by_reason = getattr(datamodule, "conversion_repairs_by_reason", None)
    if callable(by_reason):
        return {str(k): {str(r): int(n) for r, n in v.items()} for k, v in by_reason().items()}
    names, readers = getattr(datamodule, "source_names", None), getattr(datamodule, "readers", None)
    if not names or readers is None:
        return {}
    out = {}
    for name, reader in zip(names, readers, strict=True):
        reasons = getattr(reader, "index", {}).get("repaired_by_reason") or {}  # none: converted before repairs
        out[str(name)] = {str(r): int(n) for r, n in reasons.items()}
    return out


def _per_source(stage: str, what: str, sources: Sequence[str],
                counts: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    """`<stage>/data/<source>/<what>` and `.../<what>/<reason>` per source, and `<stage>/data/<what>` in all."""
    out: dict[str, float] = {}
    for name in sources:
        reasons = counts.get(name, {})
        out[f"{stage}/data/{name}/{what}"] = float(sum(reasons.values()))
        for reason, n in sorted(reasons.items()):
            out[f"{stage}/data/{name}/{what}/{_slug(reason)}"] = float(n)
    out[f"{stage}/data/{what}"] = float(sum(sum(r.values()) for r in counts.values()))
    return out


def _slug(reason: str) -> str:
    """A metric-name-safe form of a reject reason ("image path outside root" -> "image_path_outside_root")."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", reason).strip("_").lower() or "other"
