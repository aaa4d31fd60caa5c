"""The Lightning DataModule of one training stage: sources, mixture, batching, bad-input policy, exact resume.

A source (conf/data/source/*.yaml) says what the data is: a LLaVA-format file and image root (converted once into
litdata parts under `cache_dir` by lmm.data.convert), or an already converted folder or URL (`shards`, read through
litdata by lmm.data.store), optionally carved out of the 665K file by rule (`carve: vqav2`), and its response-format
policy with `format_prompt` on or off. The mixture says how much of each source an epoch holds (`weights` x
`num_samples`, or absolute `counts`, default: all of each). The order, the sharding over ranks and dataloader workers
and the resume position are MixturePlan's and MixtureLoader's.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from transformers import PreTrainedTokenizerBase

from lmm.data.carve import CARVE_VERSION, carve
from lmm.data.convert import convert, default_store_dir, locked, source_fingerprint
from lmm.data.dataset import Collator, MixtureDataset, SampleBuilder
from lmm.data.formats import FormatPrompt
from lmm.data.mixture import MixtureLoader, MixturePlan, MixtureSampler, SourceInfo, epoch_counts
from lmm.data.records import Record, RecordError, resolve_image_path
from lmm.data.rejects import ON_ERROR, RejectLog
from lmm.data.store import StoreReader, is_remote

SOURCE_KEYS = {"name", "records", "image_root", "shards", "carve", "format", "format_prompt", "weight", "count",
               "enabled", "description"}


def _plain(value: Any) -> Any:
    """OmegaConf containers (from Hydra) to plain Python."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        pass
    return value


def _log(msg: str) -> None:
    if int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0:
        print(f"[lmm] {msg}", flush=True)


class LlavaDataModule(L.LightningDataModule):
    """Serves one rank's micro-batches of a weighted, streamed, exactly resumable mixture of LLaVA-format sources.

    The pipeline hands in the template, tokenizer and image transform (they belong to the model and the stage) and
    the micro-batch size (derived from the stage's global batch); everything else comes from conf/data. World size,
    rank and gradient accumulation are read from the trainer (or given, outside Lightning).
    """

    def __init__(self, sources: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]], template: Any,
                 tokenizer: PreTrainedTokenizerBase, image_transform: Callable, max_text_length: int,
                 micro_batch_size: int, seed: int = 0, num_workers: int = 0,
                 weights: Mapping[str, float] | None = None, counts: Mapping[str, int] | None = None,
                 num_samples: int | None = None, shuffle: bool = True, group_by_modality_length: bool = False,
                 pack: bool = False, visual_tokens: int | None = None, on_error: str = "error",
                 truncate: bool = False, verify_images: str = "header", cache_dir: str | os.PathLike | None = None,
                 remote_cache_dir: str | os.PathLike | None = None, output_dir: str | os.PathLike | None = None,
                 chunk_bytes: int = 64 << 20, max_reject_fraction: float | None = 0.05,
                 prefetch_factor: int = 2, progress: bool = True, world_size: int | None = None,
                 rank: int | None = None, accumulate: int | None = None, **unused: Any) -> None:
        super().__init__()
        if unused:
            raise TypeError(f"unknown data option(s) {sorted(unused)}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.specs = self._specs(_plain(sources), _plain(weights) or {}, _plain(counts) or {})
        self.template, self.tokenizer, self.image_transform = template, tokenizer, image_transform
        self.max_text_length, self.micro_batch_size, self.seed = max_text_length, micro_batch_size, seed
        self.num_workers, self.num_samples, self.shuffle = num_workers, num_samples, shuffle
        self.group_by_modality_length, self.pack, self.visual_tokens = group_by_modality_length, pack, visual_tokens
        if pack and visual_tokens is None:
            raise ValueError("packing needs `visual_tokens` (the visual tokens per image) to fill rows to max_length")
        self.on_error, self.truncate, self.verify_images = on_error, truncate, verify_images
        # lenient runs: a share of bad records above this is a broken source (a wrong image root skips every image),
        # not noise to skip; None turns the check off
        self.max_reject_fraction = max_reject_fraction
        self.cache_dir = Path(cache_dir) if cache_dir is not None else Path(".cache/lmm/shards")
        self.remote_cache_dir = remote_cache_dir
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.chunk_bytes, self.prefetch_factor, self.progress = chunk_bytes, prefetch_factor, progress
        self._world, self._rank, self._accumulate = world_size, rank, accumulate
        self.readers: list[StoreReader] | None = None
        self.loader: MixtureLoader | None = None

    # ---------------------------------------------------------------------------------------------- sources
    @staticmethod
    def _specs(sources: Any, weights: Mapping[str, float], counts: Mapping[str, int]) -> list[dict[str, Any]]:
        items = [dict(v, name=v.get("name", k)) for k, v in sources.items()] if isinstance(sources, Mapping) \
            else [dict(s) for s in sources]
        specs = []
        for i, spec in enumerate(items):
            unknown = set(spec) - SOURCE_KEYS
            if unknown:
                raise ValueError(f"source {spec.get('name', i)!r}: unknown key(s) {sorted(unknown)}; "
                                 f"known: {sorted(SOURCE_KEYS)}")
            if not spec.get("records") and not spec.get("shards"):
                raise ValueError(f"source {spec.get('name', i)!r} needs `records` (LLaVA JSON) or `shards`")
            spec.setdefault("name", spec.get("carve") or Path(str(spec.get("records") or spec["shards"])).stem)
            if spec.get("enabled", True) is False:
                continue
            name = spec["name"]
            if name in weights:
                spec["weight"] = weights[name]
            if name in counts:
                spec["count"] = counts[name]
            if spec.get("weight") == 0 or spec.get("count") == 0:
                continue
            specs.append(spec)
        for name in set(weights) | set(counts):
            if name not in {s["name"] for s in items}:
                raise ValueError(f"the mixture weighs source {name!r}, which is not among its sources")
        names = [s["name"] for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        if not specs:
            raise ValueError("a stage needs at least one data source")
        return specs

    @property
    def source_names(self) -> list[str]:
        return [s["name"] for s in self.specs]

    def _records_file(self, spec: dict[str, Any]) -> Path:
        """The LLaVA-format file of a source: its `records`, or its carved part of them."""
        records = Path(spec["records"])
        if not spec.get("carve"):
            return records
        key = source_fingerprint(records, None)
        key["carve_version"] = CARVE_VERSION
        import hashlib

        folder = self.cache_dir / "carved" / (records.stem + "-" + hashlib.sha256(
            json.dumps(key, sort_keys=True).encode()).hexdigest()[:12])
        with locked(folder.parent / f".{folder.name}.lock"):
            if not (folder / "carve_report.json").exists():
                _log(f"carving {records} into its sources (once) -> {folder}")
                report = carve(records, folder, progress=self.progress)
                if report["rejected"]:
                    _log(f"carving {records}: {sum(report['rejected'].values())} entries are not records and belong "
                         f"to no source ({report['rejected']}); see {report['rejects_file']}")
        carved = folder / f"{spec['carve']}.jsonl"
        if not carved.exists():
            report = json.loads((folder / "carve_report.json").read_text())
            raise ValueError(f"source {spec['name']!r}: carving {records} found no {spec['carve']!r} records "
                             f"(found {report['counts']})")
        return carved

    def _store_location(self, spec: dict[str, Any]) -> str:
        """Convert the source if needed (once, shared by runs) and return its converted folder or URL.

        A `shards` URL (s3://, gs://, local:/path, ...) is always read as is, even when `records` is also set (as in
        the source configs): lmm converts into local folders only, and a URL must never be taken for one.
        """
        shards = str(spec["shards"]) if spec.get("shards") else None
        if shards is not None and (is_remote(shards) or not spec.get("records")):
            return shards
        records = self._records_file(spec)
        root = spec.get("image_root")
        root = Path(root) if root is not None else Path(spec["records"]).parent
        out = Path(shards.removeprefix("file://")) if shards is not None else \
            default_store_dir(self.cache_dir, spec["name"], records, root,
                              settings={"verify_images": self.verify_images, "chunk_bytes": self.chunk_bytes})
        if not (out / "index.json").exists():
            _log(f"converting source {spec['name']!r} ({records}) into litdata parts (once) -> {out}")
        convert(records, root, out, name=spec["name"], on_error=self.on_error, verify_images=self.verify_images,
                chunk_bytes=self.chunk_bytes, progress=self.progress)
        return str(out)

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
                reader = StoreReader(location, cache_dir=self.remote_cache_dir)
            except FileNotFoundError as e:
                hint = (" If it was never converted: lmm reads remote folders as they are and never converts into "
                        "remote storage; convert locally (leave `shards` unset, or give a local folder) and upload "
                        "the folder"
                        if is_remote(location) else "")
                raise FileNotFoundError(f"source {spec['name']!r}: {e}.{hint}") from e
            self._check_conversion_rejects(spec["name"], reader)
            self.readers.append(reader)

    def _check_conversion_rejects(self, name: str, reader: StoreReader) -> None:
        """Strict runs refuse a conversion that skipped records; lenient runs copy its rejects into the run folder."""
        rejected = int(reader.index.get("rejected", 0))
        if not rejected:
            return
        rejects = reader.rejects_file()
        if self.on_error == "error":
            first = rejects.read_text().splitlines()[:3] if rejects.exists() else []
            raise RecordError(f"source {name!r}: its conversion ({reader.location}) skipped {rejected} bad records "
                              f"(a lenient conversion), and this run is strict (on_error=error). First: {first}")
        fraction = rejected / max(rejected + len(reader), 1)
        if self.max_reject_fraction is not None and fraction > self.max_reject_fraction:
            raise RecordError(f"source {name!r}: its conversion skipped {rejected} of {rejected + len(reader)} records "
                              f"({fraction:.1%} > max_reject_fraction={self.max_reject_fraction}): "
                              f"{reader.index['rejected_by_reason']}; see {rejects}. Fix the source (its records file "
                              "or image_root) or raise data.<stage>.max_reject_fraction")
        _log(f"source {name!r}: {rejected} records were skipped when converting ({reader.index['rejected_by_reason']})"
             f"; see {rejects}")
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
        infos = [SourceInfo(n, len(r), r.has_image, r.words) for n, r in zip(self.source_names, self.readers,
                                                                               strict=True)]
        counts = epoch_counts([len(r) for r in self.readers], [s.get("weight") for s in self.specs],
                              [s.get("count") for s in self.specs], self.num_samples)
        return MixturePlan(infos, counts, self.seed, self.micro_batch_size, world, accumulate,
                           self.group_by_modality_length, self.shuffle)

    def schedule(self) -> dict[str, Any]:
        """The epoch plan the loader follows: samples, optimizer steps (the last one smaller when the global batch
        does not divide the epoch), its samples, micro-batches per rank, per-source counts (`MixturePlan.describe`)."""
        return (self.loader.sampler.plan if self.loader is not None else self.plan()).describe()

    def dataset(self) -> MixtureDataset:
        self.setup()
        rejects = RejectLog((self.output_dir or self.cache_dir / "rejects") / "rejects.jsonl") \
            if self.on_error == "skip" else None
        extra = (self.visual_tokens - 1) if self.visual_tokens else 0
        builder = SampleBuilder(self.template, self.tokenizer, self.image_transform, self.max_text_length,
                                on_error=self.on_error, truncate=self.truncate, rejects=rejects,
                                text_only_extra=extra)
        formats = [FormatPrompt(s.get("format", "none"), s.get("format_prompt", True)) for s in self.specs]
        return MixtureDataset(self.readers, self.source_names, formats, builder)

    def collator(self) -> Collator:
        v = self.visual_tokens or 1
        return Collator(self.tokenizer.pad_token_id, self.image_transform.image_size, visual_tokens=v,
                        pack_length=(self.max_text_length + v - 1) if self.pack else None)

    def train_dataloader(self) -> MixtureLoader:
        _, rank, _ = self._distributed()
        plan = self.plan()
        d = plan.describe()
        last = "" if d["last_step_samples"] == d["step_samples"] else \
            f" (the last one of {d['last_step_samples']}, so every sample is trained on)"
        filler = f"; {d['filler_micro_batches']} micro-batch(es) of the last step hold no sample (fewer samples " \
            "than micro-batches): a row without loss keeps those ranks in step" if d["filler_micro_batches"] else ""
        _log(f"data: {d['num_samples']:,} samples per epoch = {d['steps']} steps of {d['step_samples']}{last}; "
             f"per source {d['counts']}; {'modality-length grouped' if self.group_by_modality_length else 'random'} "
             f"micro-batches{', packed' if self.pack else ''}; bad samples: {self.on_error}{filler}")
        if self.num_workers > 0:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.loader = MixtureLoader(self.dataset(), MixtureSampler(plan, rank), self.collator(),
                                    num_workers=self.num_workers,
                                    prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None)
        return self.loader

    # ------------------------------------------------------------------------------------------------ samples
    def example_records(self, n: int) -> list[tuple[Record, Path]]:
        """The first `n` samples of the first source (format prompt applied) with an image root that holds their
        images: the source's own root when it has them, else a folder the images are extracted to."""
        self.setup()
        spec, reader = self.specs[0], self.readers[0]
        fmt = FormatPrompt(spec.get("format", "none"), spec.get("format_prompt", True))
        samples = [reader.record(i) for i in range(min(n, len(reader)))]
        records = [Record(rec.id, rec.image, fmt(rec.conversations)) for rec, _ in samples]
        root = Path(spec["image_root"]) if spec.get("image_root") else None
        if root is None or not all((root / r.image).is_file() for r in records if r.image is not None):
            root = (self.output_dir or self.cache_dir) / "examples" / spec["name"]
            for rec, (_, image) in zip(records, samples, strict=True):
                if rec.image is not None:
                    target = resolve_image_path(root, rec.image)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(image or b"")
        return [(rec, root) for rec in records]
