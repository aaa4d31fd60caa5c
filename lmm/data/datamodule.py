"""The Lightning DataModule of one training stage: sources, mixture, batching, bad-input policy, exact resume.

Its settings come from conf/data in typed groups (lmm.data.args): the sources (lmm.data.sources.SourceSpec, one
conf/data/source/*.yaml each: a LLaVA-format file converted once into a store, or a store read as is), the mixture
(how much of each source an epoch holds: `weights` x `num_samples`, or absolute `counts`, default all of each), the
loader (workers, modality grouping, packing), the bad-input policy and where stores are kept. The order, the sharding
over ranks and dataloader workers and the resume position are MixturePlan's and MixtureLoader's.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from transformers import PreTrainedTokenizerBase

from lmm.config import to_plain
from lmm.data.args import LoaderArgs, MixtureArgs, PolicyArgs, StoreArgs, coerce
from lmm.data.dataset import Collator, MixtureDataset, SampleBuilder
from lmm.data.formats import FormatPrompt
from lmm.data.mixture import MixtureLoader, MixturePlan, MixtureSampler, SourceInfo, subsample
from lmm.data.portions import epoch_counts
from lmm.data.records import Record, RecordError, resolve_image_path
from lmm.data.rejects import RejectLog
from lmm.data.sources.spec import SourceSpec, ensure_store
from lmm.data.sources.store import StoreReader, is_remote
from lmm.log import log


class LlavaDataModule(L.LightningDataModule):
    """Serves one rank's micro-batches of a weighted, streamed, exactly resumable mixture of LLaVA-format sources.

    conf/data/<option>.yaml gives each stage a partial of it with `sources` and the four settings groups; the pipeline
    completes it with what belongs to the model, the stage and the run: the template, tokenizer and image transform,
    the text context (`max_text_length`), the micro-batch size (derived from the stage's global batch), the seed, the
    stage folder (`output_dir`, for rejects and sample images) and the visual tokens per image. World size, rank and
    gradient accumulation are read from the trainer (or given, outside Lightning).
    """

    def __init__(self, sources: Sequence[SourceSpec | Mapping[str, Any]], template: Any,
                 tokenizer: PreTrainedTokenizerBase, image_transform: Callable, max_text_length: int,
                 micro_batch_size: int, seed: int = 0, *, mixture: MixtureArgs | Mapping[str, Any] | None = None,
                 loader: LoaderArgs | Mapping[str, Any] | None = None,
                 policy: PolicyArgs | Mapping[str, Any] | None = None,
                 store: StoreArgs | Mapping[str, Any] | None = None, output_dir: str | os.PathLike | None = None,
                 visual_tokens: int | None = None, world_size: int | None = None, rank: int | None = None,
                 accumulate: int | None = None) -> None:
        super().__init__()
        self.mixture, self.loader_args = coerce(MixtureArgs, mixture), coerce(LoaderArgs, loader)
        self.policy, self.store = coerce(PolicyArgs, policy), coerce(StoreArgs, store)
        self.specs = self._specs(sources, self.mixture)
        self.template, self.tokenizer, self.image_transform = template, tokenizer, image_transform
        self.max_text_length, self.micro_batch_size, self.seed = max_text_length, micro_batch_size, seed
        self.visual_tokens = visual_tokens
        if self.loader_args.pack and visual_tokens is None:
            raise ValueError("packing needs `visual_tokens` (the visual tokens per image) to fill rows to max_length")
        self.cache_dir = Path(self.store.cache_dir)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self._world, self._rank, self._accumulate = world_size, rank, accumulate
        self.readers: list[StoreReader] | None = None
        self.loader: MixtureLoader | None = None

    @property
    def max_reject_fraction(self) -> float | None:
        """The policy's limit on bad records (DataAccounting reads it from the trainer's datamodule)."""
        return self.policy.max_reject_fraction

    # ---------------------------------------------------------------------------------------------- sources
    @staticmethod
    def _specs(sources: Sequence[SourceSpec | Mapping[str, Any]], mixture: MixtureArgs) -> list[SourceSpec]:
        """The sources an epoch takes samples of, with the mixture's weights and counts applied."""
        if isinstance(sources, (Mapping, str, bytes)):
            raise TypeError(f"`sources` is a list of sources, got {type(sources).__name__}")
        items = [_source(s) for s in sources]
        for name in set(mixture.weights) | set(mixture.counts) | set(mixture.passes):
            if name not in {s.name for s in items}:
                raise ValueError(f"the mixture names source {name!r} (weights, counts, passes), not among its sources")
        specs = []
        weighed = bool(mixture.weights)  # the mixture's weights replace the sources' own counts and passes
        for spec in items:
            spec = dataclasses.replace(spec, weight=mixture.weights.get(spec.name, spec.weight),
                                       count=mixture.counts.get(spec.name, None if weighed else spec.count),
                                       passes=mixture.passes.get(spec.name, None if weighed else spec.passes))
            if spec.active:
                specs.append(spec)
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        if not specs:
            raise ValueError("a stage needs at least one data source")
        return specs

    @property
    def source_names(self) -> list[str]:
        return [s.name for s in self.specs]

    def _store_location(self, spec: SourceSpec) -> str:
        """The source's store (converted first if need be, once, shared by runs)."""
        return ensure_store(spec, self.cache_dir, on_error=self.policy.on_error,
                            verify_images=self.policy.verify_images, chunk_bytes=self.store.chunk_bytes,
                            progress=self.store.progress)

    def prepare_data(self) -> None:
        """Carve and convert what is missing (Lightning runs this once per node before `setup`)."""
        for spec in self.specs:
            self._store_location(spec)

    def setup(self, stage: str | None = None) -> None:
        if self.readers is not None:
            return
        self.readers = []
        for spec in self.specs:
            location = self._store_location(spec)
            try:
                reader = StoreReader(location, cache_dir=self.store.remote_cache_dir)
            except FileNotFoundError as e:
                hint = (" If it was never converted: lmm reads remote stores as they are and never converts into "
                        "remote storage; convert locally (leave `store` unset, or give a local folder) and upload "
                        "the folder"
                        if is_remote(location) else "")
                raise FileNotFoundError(f"source {spec.name!r}: {e}.{hint}") from e
            self._check_conversion_rejects(spec.name, reader)
            self.readers.append(reader)

    def _check_conversion_rejects(self, name: str, reader: StoreReader) -> None:
        """Strict runs refuse a conversion that skipped records; lenient runs copy its rejects into the run folder."""
        rejected = int(reader.index.get("rejected", 0))
        if not rejected:
            return
        rejects = reader.rejects_file()
        if self.policy.on_error == "error":
            first = rejects.read_text().splitlines()[:3] if rejects.exists() else []
            raise RecordError(f"source {name!r}: its conversion ({reader.location}) skipped {rejected} bad records "
                              f"(a lenient conversion), and this run is strict (on_error=error). First: {first}")
        fraction = rejected / max(rejected + len(reader), 1)
        if self.max_reject_fraction is not None and fraction > self.max_reject_fraction:
            raise RecordError(f"source {name!r}: its conversion skipped {rejected} of {rejected + len(reader)} records "
                              f"({fraction:.1%} > max_reject_fraction={self.max_reject_fraction}): "
                              f"{reader.index['rejected_by_reason']}; see {rejects}. Fix the source (its records file "
                              "or image_root) or raise data.<stage>.policy.max_reject_fraction")
        log.warning(f"source {name!r}: {rejected} records were skipped when converting "
                    f"({reader.index['rejected_by_reason']}); see {rejects}")
        if self.output_dir is not None and rejects.exists():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(rejects, self.output_dir / f"rejects-convert-{name}.jsonl")

    def conversion_rejects(self) -> dict[str, int]:
        """Records each source's conversion skipped (lenient conversions only)."""
        self.setup()
        return {n: int(r.index.get("rejected", 0)) for n, r in zip(self.source_names, self.readers, strict=True)}

    def conversion_rejects_by_reason(self) -> dict[str, dict[str, int]]:
        """The same per reason (what DataAccounting logs): {source: {reason: count}}, for every source."""
        self.setup()
        out = {}
        for name, reader in zip(self.source_names, self.readers, strict=True):
            reasons = {str(k): int(v) for k, v in (reader.index.get("rejected_by_reason") or {}).items()}
            missing = int(reader.index.get("rejected", 0)) - sum(reasons.values())
            if missing > 0:  # an index without a breakdown still counts its rejects
                reasons["unspecified"] = reasons.get("unspecified", 0) + missing
            out[name] = reasons
        return out

    # ------------------------------------------------------------------------------------------------ loading
    def _distributed(self) -> tuple[int, int, int]:
        trainer = getattr(self, "trainer", None)
        world = self._world if self._world is not None else (trainer.world_size if trainer is not None else 1)
        rank = self._rank if self._rank is not None else (trainer.global_rank if trainer is not None else 0)
        accumulate = self._accumulate if self._accumulate is not None else \
            (trainer.accumulate_grad_batches if trainer is not None else 1)
        return int(world), int(rank), int(accumulate)

    def plan(self) -> MixturePlan:
        self.setup()
        world, _, accumulate = self._distributed()
        infos = [SourceInfo(n, len(r), r.has_image, self.lengths(r)) for n, r in zip(self.source_names, self.readers,
                                                                                      strict=True)]
        infos = subsample(infos, self.mixture.fraction, self.seed)
        counts = epoch_counts([i.size for i in infos], [s.weight for s in self.specs],
                              [s.count for s in self.specs], self.mixture.num_samples, [s.passes for s in self.specs])
        return MixturePlan(infos, counts, self.seed, self.micro_batch_size, world, accumulate,
                           self.loader_args.group_by_modality_length, self.mixture.shuffle)

    def lengths(self, reader: StoreReader) -> np.ndarray:
        """Each sample's length for grouping by modality and length: LLaVA's proxy, the words over all turns; with
        tiled input (input=hd/anyres), whose images differ in visual tokens, plus the image's own visual tokens from
        its stored size (a fixed input adds the same count to every image, which changes no single-modality step,
        so its lengths stay LLaVA's)."""
        words = np.asarray(reader.words, dtype=np.int64)
        count = getattr(self.image_transform, "visual_tokens", None)
        if count is None or not self.loader_args.group_by_modality_length:
            return words
        sizes = reader.image_sizes
        known = np.flatnonzero(np.asarray(reader.has_image) & (sizes.min(axis=1) > 0))
        if not len(known):
            return words
        unique, inverse = np.unique(sizes[known], axis=0, return_inverse=True)
        tokens = np.array([count((int(h), int(w))) for h, w in unique], dtype=np.int64)
        out = words.copy()
        out[known] += tokens[inverse.reshape(-1)]
        return out

    def schedule(self) -> dict[str, Any]:
        """The epoch plan the loader follows: samples, optimizer steps (the last one smaller when the global batch
        does not divide the epoch), its samples, micro-batches per rank, per-source counts (`MixturePlan.describe`)."""
        return (self.loader.sampler.plan if self.loader is not None else self.plan()).describe()

    def dataset(self) -> MixtureDataset:
        self.setup()
        rejects = RejectLog((self.output_dir or self.cache_dir / "rejects") / "rejects.jsonl") \
            if self.policy.on_error == "skip" else None
        extra = (self.visual_tokens - 1) if self.visual_tokens else 0
        builder = SampleBuilder(self.template, self.tokenizer, self.image_transform, self.max_text_length,
                                on_error=self.policy.on_error, truncate=self.policy.truncate, rejects=rejects,
                                text_only_extra=extra)
        formats = [FormatPrompt(s.format, s.format_prompt) for s in self.specs]
        return MixtureDataset(self.readers, self.source_names, formats, builder)

    def collator(self) -> Collator:
        v = self.visual_tokens or 1
        return Collator(self.tokenizer.pad_token_id, self.image_transform.image_size, visual_tokens=v,
                        pack_length=(self.max_text_length + v - 1) if self.loader_args.pack else None,
                        blank=getattr(self.image_transform, "blank", None))

    def train_dataloader(self) -> MixtureLoader:
        _, rank, _ = self._distributed()
        plan = self.plan()
        d = plan.describe()
        last = "" if d["last_step_samples"] == d["step_samples"] else \
            f" (the last one of {d['last_step_samples']}, so every sample is trained on)"
        filler = f"; {d['filler_micro_batches']} micro-batch(es) of the last step hold no sample (fewer samples " \
            "than micro-batches): a row without loss keeps those ranks in step" if d["filler_micro_batches"] else ""
        args = self.loader_args
        kept = f" ({self.mixture.fraction:g} of the records kept: {d['kept_records']})" if "kept_records" in d else ""
        log.info(f"data: {d['num_samples']:,} samples per epoch{kept} = {d['steps']} steps of {d['step_samples']}"
                 f"{last}; "
                 f"per source {d['counts']}; {'modality-length grouped' if args.group_by_modality_length else 'random'}"
                 f" micro-batches{', packed' if args.pack else ''}; bad samples: {self.policy.on_error}{filler}")
        if args.num_workers > 0:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.loader = MixtureLoader(self.dataset(), MixtureSampler(plan, rank), self.collator(),
                                    num_workers=args.num_workers,
                                    prefetch_factor=args.prefetch_factor if args.num_workers > 0 else None)
        return self.loader

    # ------------------------------------------------------------------------------------------------ samples
    def example_records(self, n: int) -> list[tuple[Record, Path]]:
        """The first `n` samples of the first source (format prompt applied) with an image root that holds their
        images: the source's own root when it has them, else a folder the images are extracted to."""
        self.setup()
        spec, reader = self.specs[0], self.readers[0]
        fmt = FormatPrompt(spec.format, spec.format_prompt)
        samples = [reader.record(i) for i in range(min(n, len(reader)))]
        records = [Record(rec.id, rec.image, fmt(rec.conversations)) for rec, _ in samples]
        root = Path(spec.image_root) if spec.image_root else None
        if root is None or not all((root / r.image).is_file() for r in records if r.image is not None):
            root = (self.output_dir or self.cache_dir) / "examples" / spec.name
            for rec, (_, image) in zip(records, samples, strict=True):
                if rec.image is not None:
                    target = resolve_image_path(root, rec.image)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(image or b"")
        return [(rec, root) for rec in records]


def _source(value: SourceSpec | Mapping[str, Any]) -> SourceSpec:
    """A SourceSpec from itself or a mapping of its fields (a command-line list of plain dicts, say)."""
    if isinstance(value, SourceSpec):
        return value
    fields = dict(to_plain(value))
    fields.pop("_target_", None)
    known = {f.name for f in dataclasses.fields(SourceSpec)}
    unknown = sorted(set(fields) - known)
    if unknown:
        renamed = " (`shards` is now called `store`)" if "shards" in unknown else ""
        raise ValueError(f"source {fields.get('name')!r}: unknown key(s) {unknown}{renamed}; known: {sorted(known)}")
    return SourceSpec(**fields)
