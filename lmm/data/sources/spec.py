"""A source (conf/data/source/*.yaml): what the data is, and where its store comes from.

A source is a LLaVA-format file and image root, converted once into a store under the cache (lmm.data.sources.convert),
or an already converted store (`store`: a local folder, or a URL read as is), optionally carved out of the 665K file
by rule (`carve: vqav2`), with its response-format policy and `format_prompt` on or off. How much of it an epoch
holds (`weight`, `count`, `passes`) is the mixture's business; the values here are the source's defaults.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from lmm.data.formats import POLICIES
from lmm.data.sources.carve import CARVE_VERSION, SOURCES, carve
from lmm.data.sources.convert import convert, default_store_dir, locked, source_fingerprint
from lmm.data.sources.store import is_remote
from lmm.log import log


@dataclass
class SourceSpec:
    """One source of a mixture. A misspelled field is a TypeError: nothing in a source config is silently ignored."""

    name: str | None = None  # unique within a mixture; default: `carve`, or the stem of `records` / `store`
    records: str | None = None  # a LLaVA-format file (JSON list or JSONL)
    image_root: str | None = None  # the folder image paths are relative to; default: the records file's folder
    store: str | None = None  # a converted source: a URL (s3://, gs://, azure://, r2://, local:/path) read as is,
    #                           or a local folder (converted into from `records` when they are given)
    carve: str | None = None  # take only this source's records of `records` (lmm.data.sources.carve.SOURCES)
    okvqa_ids: str | None = None  # a file of OKVQA record ids (one per line): the carve then tells OKVQA from VQAv2
    format: str = "none"  # response-format policy (lmm.data.formats.POLICIES)
    format_prompt: bool = True  # the policy's prompt on (appended where missing) or off (stripped)
    weight: float | None = None  # share of the mixture's num_samples (every source weighed, or none)
    count: int | None = None  # absolute samples per epoch
    passes: float | None = None  # samples per epoch as passes over its records (3: each record three times; after
    #                              the mixture's `fraction`, so a kept subset is drawn as often)
    enabled: bool = True  # false: the mixture leaves the source out
    description: str | None = None

    def __post_init__(self) -> None:
        if not self.records and not self.store:
            raise ValueError(f"source {self.name!r} needs `records` (a LLaVA-format file) or `store`")
        if self.name is None:
            self.name = self.carve or Path(str(self.records or self.store)).stem
        if self.format not in POLICIES:
            raise ValueError(f"source {self.name!r}: format={self.format!r} is not a response-format policy; "
                             f"choose from {POLICIES}")
        if self.carve is not None and self.carve not in SOURCES:
            raise ValueError(f"source {self.name!r}: carve={self.carve!r} is not a source of the 665K mixture; "
                             f"choose from {SOURCES}")
        if self.carve == "okvqa" and not self.okvqa_ids and self.enabled and not self.store:
            log.warning(f"source {self.name!r} is left out: without `okvqa_ids` the carve cannot tell OKVQA from "
                        "VQAv2, so its records stay in vqav2 (spec §9)")
            self.enabled = False

    @property
    def active(self) -> bool:
        """Whether a mixture takes samples of it (enabled, and not weighed or counted zero)."""
        return self.enabled is not False and self.weight != 0 and self.count != 0 and self.passes != 0


def ensure_store(spec: SourceSpec, cache_dir: str | Path, *, on_error: str = "error", verify_images: str = "header",
                 chunk_bytes: int = 64 << 20, progress: bool = True) -> str:
    """The source's store, as a folder or URL: carved and converted first if need be (once; runs share it).

    A `store` URL is always read as is, even when `records` is also set (as in the source configs): lmm converts into
    local folders only, and a URL must never be taken for one. Without `store`, the store is a folder under
    `cache_dir` keyed by the input and the settings that shape it (on_error, verify_images, chunk_bytes).
    """
    store = str(spec.store) if spec.store else None
    if store is not None and (is_remote(store) or not spec.records):
        return store
    records = carved_records(spec, Path(cache_dir), progress) if spec.carve else Path(spec.records)
    root = Path(spec.image_root) if spec.image_root is not None else Path(spec.records).parent
    out = Path(store.removeprefix("file://")) if store is not None else \
        default_store_dir(cache_dir, spec.name, records, root,
                          settings={"verify_images": verify_images, "chunk_bytes": chunk_bytes})
    if not (out / "index.json").exists():
        log.info(f"converting source {spec.name!r} ({records}) into a store (once) -> {out}")
    convert(records, root, out, name=spec.name, on_error=on_error, verify_images=verify_images,
            chunk_bytes=chunk_bytes, progress=progress)
    return str(out)


def carved_records(spec: SourceSpec, cache_dir: Path, progress: bool = True) -> Path:
    """The source's part of its `records` file, carved once (every source of the file at a time) under the cache."""
    records = Path(spec.records)
    ids = Path(spec.okvqa_ids).read_text().split() if spec.okvqa_ids else None
    key = {**source_fingerprint(records, None), "carve_version": CARVE_VERSION}
    if ids is not None:  # carving with and without the ids gives different vqav2 files
        key["okvqa_ids"] = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    folder = cache_dir / "carved" / (records.stem + "-" + hashlib.sha256(
        json.dumps(key, sort_keys=True).encode()).hexdigest()[:12])
    with locked(folder.parent / f".{folder.name}.lock"):
        if not (folder / "carve_report.json").exists():
            log.info(f"carving {records} into its sources (once) -> {folder}")
            report = carve(records, folder, okvqa_ids=ids, progress=progress)
            if report["rejected"]:
                log.warning(f"carving {records}: {sum(report['rejected'].values())} entries are not records and "
                            f"belong to no source ({report['rejected']}); see {report['rejects_file']}")
    carved = folder / f"{spec.carve}.jsonl"
    if not carved.exists():
        report = json.loads((folder / "carve_report.json").read_text())
        raise ValueError(f"source {spec.name!r}: carving {records} found no {spec.carve!r} records "
                         f"(found {report['counts']})")
    return carved
