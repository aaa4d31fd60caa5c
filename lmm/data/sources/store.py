"""A store: one converted source, its samples in litdata datasets ("parts"), lmm's index and per-sample metadata.

lmm's one word for a converted source is "store" (the `store:` key of a source, StoreReader, `cache_dir` of
StoreArgs); a store is made of parts, each a litdata dataset of chunk files. Why litdata (measurements in
experiments/data_pipeline.md): it is the Lightning ecosystem's streaming format and reads local folders or object
storage with its own download code, and its StreamingDataset gives random access by index, which is all lmm asks of
it. The order, the weighting, the rank and worker sharding and the exact resume stay lmm's (lmm.data.mixture):
litdata's combined dataset does not resume exactly with 2 workers, and LLaVA's single-modality batches need a sampler
that sees every sample's modality and length up front. Why parts: each is written into a temporary folder and
renamed when litdata is done with it, so an interrupted conversion resumes after its last finished part. Layout:

    index.json       lmm's: format, parts, counts, rejects, source fingerprint (written last: the conversion finished)
    meta.npy         per sample: part, word count (LLaVA's length proxy), has_image, the image's height and width
                     (0 without an image, or if its header is unreadable): the plan reads no samples
    part-00000/      a litdata dataset (its own index.json + chunk-*.bin) of up to `part_samples` samples, each
                     {"record": record JSON (id, image, conversations), "image": image bytes, b"" if text-only}
    rejects.jsonl    records the conversion skipped (lenient mode), one JSON line each with its reason
    repairs.jsonl    records the conversion repaired and kept (lmm.data.records.repair_record), one line each
    progress.json    while converting: the finished parts, so an interrupted conversion resumes

A store is read where it is, or from a URL that litdata streams (s3://, gs://, azure://, r2://, or `local:/path`
for a folder read as if remote): lmm's small files and litdata's chunk indexes are copied into a local cache,
samples are read by byte range (s3, gs) or from chunk files copied into that cache (azure, local:).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

try:
    from litdata import StreamingDataset
    from litdata.streaming.downloader import get_downloader
    from litdata.streaming.writer import BinaryWriter
    from litdata.utilities.env import _DistributedEnv
except ModuleNotFoundError as e:  # pragma: no cover - an install that skipped the README's litdata step
    raise ModuleNotFoundError(f"{e}: lmm stores its data with litdata, installed without its dependencies (it asks "
                              "for torchvision): pip install --no-deps litdata==0.2.76 (see the README)") from e

from lmm.data.records import Record, parse_record
from lmm.log import log

FORMAT = "lmm-litdata"
# Part of every store's cache key (lmm.data.sources.convert.source_fingerprint) and checked by StoreReader: bump it
# when what a conversion keeps changes, so stores made before are rebuilt. 1: lmm's own format (before litdata);
# 2: litdata parts; 3: a record whose first turn is not from human is repaired and kept (2 rejected it); 4: each
# image's size in meta.npy (tiled input counts its visual tokens from it when grouping by length).
FORMAT_VERSION = 4
META_DTYPE = np.dtype([("part", "<u4"), ("words", "<i4"), ("has_image", "?"), ("height", "<u4"), ("width", "<u4")])
CACHE_RACE_SECONDS = 120.0  # how long a worker waits for a chunk that another worker is downloading
REMOTE_PREFIXES = ("s3://", "gs://", "azure://", "r2://", "local:")  # what litdata 0.2.76 streams for this format


def part_name(k: int) -> str:
    """The folder of part k inside a store."""
    return f"part-{k:05d}"


def words_of(rec: Record) -> int:
    """LLaVA's length proxy (modality_lengths): whitespace words over all turns."""
    return sum(len(t.value.split()) for t in rec.conversations)


def encode_sample(rec: Record, image: bytes | None) -> dict[str, Any]:
    """One sample as litdata stores it: the record as JSON text and the image bytes (empty for text-only)."""
    record = json.dumps({"id": rec.id, "image": rec.image,
                         "conversations": [{"from": t.role, "value": t.value} for t in rec.conversations]},
                        ensure_ascii=False)
    return {"record": record, "image": image or b""}


def decode_sample(sample: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
    """The raw record dict and the image bytes (None for text-only) of a sample as litdata returns it."""
    raw = json.loads(sample["record"])
    return raw, bytes(sample["image"]) if raw.get("image") is not None else None


def is_remote(location: str) -> bool:
    """Whether a location is a URL (litdata's `local:` too); file:// and plain paths are local folders."""
    return ("://" in location or location.startswith("local:")) and not location.startswith("file://")


class PartWriter:
    """Writes one part: a litdata dataset in a temporary folder, renamed into place once litdata has finished it,
    so a part folder that exists is complete."""

    def __init__(self, out: Path, number: int, chunk_bytes: int) -> None:
        self.out, self.number = out, number
        self.tmp = out / f".{part_name(number)}.tmp"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.writer = BinaryWriter(str(self.tmp), chunk_bytes=int(chunk_bytes))
        # A conversion is one process, also inside a DDP job or under torchrun (WORLD_SIZE set): left to detect the
        # job, litdata's writer names its chunks after the rank and its merge() waits for one index per rank.
        self.writer._distributed_env = _DistributedEnv(world_size=1, global_rank=0, num_nodes=1)
        self.writer._rank = 0
        self.meta: list[tuple[int, bool, int, int]] = []  # words, has_image, height, width

    def __len__(self) -> int:
        return len(self.meta)

    def add(self, rec: Record, image: bytes | None, size: tuple[int, int] = (0, 0)) -> None:
        """One sample; `size`: its image's (height, width) as the conversion read it, (0, 0) if unknown."""
        self.writer[len(self.meta)] = encode_sample(rec, image)
        self.meta.append((words_of(rec), image is not None, *size))

    def finish(self) -> dict[str, Any]:
        """Close the part (litdata's chunk index, lmm's per-sample metadata) and move it into place."""
        self.writer.done()
        self.writer.merge()
        meta = np.zeros(len(self.meta), dtype=META_DTYPE)
        meta["part"] = self.number
        for k, field in enumerate(("words", "has_image", "height", "width")):
            meta[field] = [m[k] for m in self.meta]
        np.save(self.tmp / "lmm-meta.npy", meta)
        sizes = [p.stat().st_size for p in self.tmp.glob("*.bin")]
        target = self.out / part_name(self.number)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(self.tmp, target)
        return {"dir": target.name, "num_samples": len(self.meta), "chunks": len(sizes), "bytes": sum(sizes)}


def join_parts(out: Path, parts: list[dict[str, Any]]) -> np.ndarray:
    """meta.npy of the whole source from the parts' own metadata (dropped by drop_part_meta once index.json is
    written: a conversion killed before that resumes from the parts again)."""
    arrays = [np.load(out / p["dir"] / "lmm-meta.npy") for p in parts]
    meta = np.concatenate(arrays) if arrays else np.zeros(0, dtype=META_DTYPE)
    np.save(out / "meta.npy", meta)
    return meta


def drop_part_meta(out: Path, parts: list[dict[str, Any]]) -> None:
    """Leave each part a plain litdata dataset."""
    for p in parts:
        (out / p["dir"] / "lmm-meta.npy").unlink(missing_ok=True)


class StoreReader:
    """Random access to the samples of one converted source: global index -> (part, index in the part) -> litdata.

    The parts' StreamingDatasets are opened on first use and dropped when the reader is pickled, so the reader can
    be handed to dataloader workers (each opens its own).
    """

    def __init__(self, location: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                 max_open_parts: int = 4) -> None:
        self.location = str(location).rstrip("/")
        self.remote = is_remote(self.location)
        if self.remote:
            if not self.location.startswith(REMOTE_PREFIXES):
                raise ValueError(f"{self.location}: litdata cannot stream this URL; use one of {REMOTE_PREFIXES} "
                                 "(local:/path reads a folder as if it were remote) or a local folder")
            base = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "lmm-litdata-cache"
            self.local = base / hashlib.sha256(self.location.encode()).hexdigest()[:16]
        else:
            self.local = Path(self.location.removeprefix("file://"))
        self.index = self._load_index()
        if self.index.get("format") != FORMAT or self.index.get("version") != FORMAT_VERSION:
            raise ValueError(f"{self.location}: not an {FORMAT} v{FORMAT_VERSION} store (found "
                             f"{self.index.get('format')} v{self.index.get('version')}); convert the source again")
        self.meta = self._load_meta()
        counts = [p["num_samples"] for p in self.index["parts"]]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        # every chunk of an open part stays mapped (a file descriptor each): bound the open parts, least recently
        # used closed first, so a 1,000-chunk source stays far below a 1,024 descriptor limit in every worker
        self.max_open_parts = max(1, int(max_open_parts))
        self._parts: OrderedDict[int, Any] = OrderedDict()

    def __len__(self) -> int:
        return int(self.index["num_samples"])

    @property
    def has_image(self) -> np.ndarray:
        return np.asarray(self.meta["has_image"])

    @property
    def words(self) -> np.ndarray:
        return np.asarray(self.meta["words"])

    @property
    def image_sizes(self) -> np.ndarray:
        """[N, 2] (height, width) per sample; (0, 0) without an image or with an unreadable header."""
        return np.stack([np.asarray(self.meta["height"]), np.asarray(self.meta["width"])], axis=1)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_parts"] = OrderedDict()
        state["meta"] = None  # re-mapped in the worker
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.meta = self._load_meta()

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"{self.location}: sample {i} out of range ({len(self)} samples)")
        k = int(np.searchsorted(self.starts, i, side="right") - 1)
        return k, i - int(self.starts[k])

    def part_path(self, i: int) -> str:
        """The part (a litdata dataset) holding sample i, for error messages."""
        return f"{self.location}/{self.index['parts'][self._locate(i)[0]]['dir']}"

    def read(self, i: int) -> tuple[dict[str, Any], bytes | None]:
        """The raw record dict and the image bytes (None for text-only) of sample i."""
        k, j = self._locate(i)
        if not self.remote:
            return decode_sample(self._part(k)[j])
        deadline = time.monotonic() + CACHE_RACE_SECONDS
        while True:
            try:
                return decode_sample(self._part(k)[j])
            except FileNotFoundError as e:
                # litdata 0.2.76: when another worker holds a chunk's download lock, this one does not wait for it
                # and opens the not-yet-published cache file. Wait for the other download to land, then read again.
                in_cache = str(getattr(e, "filename", "") or "").startswith(str(self.local))
                if not in_cache or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def record(self, i: int) -> tuple[Record, bytes | None]:
        raw, image = self.read(i)
        return parse_record(raw, self.location, i), image

    def rejects_file(self) -> Path:
        """The conversion's rejects.jsonl, copied from remote storage if need be (it may not exist)."""
        path = self.local / "rejects.jsonl"
        if self.remote and not path.exists() and self.index.get("rejected"):
            try:
                self._download("rejects.jsonl", path)
            except Exception as e:  # the caller reports the missing file; say why it is missing
                log.warning(f"{self.location}: could not copy rejects.jsonl ({type(e).__name__}: {e})")
        return path

    def _part(self, k: int) -> Any:
        ds = self._parts.get(k)
        if ds is not None:
            self._parts.move_to_end(k)
        else:
            part = self.index["parts"][k]
            # batch_decode=0: decode only the sample asked for (the default decodes a window around it). Locally,
            # litdata keeps max(4, max_pre_download) chunks memory-mapped and re-maps (with a read-ahead hint) on
            # every switch beyond that: random reads over a part are 7-9x faster with all of its chunks mapped.
            if self.remote:
                ds = StreamingDataset(f"{self.location}/{part['dir']}", cache_dir=str(self.local / "litdata"),
                                      batch_decode=0)
            else:
                ds = StreamingDataset(str(self.local / part["dir"]), batch_decode=0,
                                      max_pre_download=max(2, int(part["chunks"])))
            self._parts[k] = ds
            while len(self._parts) > self.max_open_parts:
                self._parts.popitem(last=False)  # dropping the dataset unmaps its chunks and closes their files
        return ds

    def _load_index(self) -> dict[str, Any]:
        """index.json; from remote storage every time (small), dropping cached metadata if it changed."""
        path = self.local / "index.json"
        if self.remote:
            self.local.mkdir(parents=True, exist_ok=True)
            fresh = self.local / f".index.json.{os.getpid()}"
            try:
                self._download("index.json", fresh)
            except Exception as e:  # each store raises its own kind of "not found"
                raise FileNotFoundError(f"{self.location}: no index.json could be read ({type(e).__name__}: {e}); "
                                        "not converted, the conversion did not finish, or the storage refused access "
                                        "(credentials, network)") from e
            if not path.exists() or path.read_bytes() != fresh.read_bytes():
                for stale in ("meta.npy", "rejects.jsonl"):
                    (self.local / stale).unlink(missing_ok=True)
            os.replace(fresh, path)
        elif not path.exists():
            raise FileNotFoundError(f"{self.location}: no index.json (not converted, or the conversion did not finish)")
        return json.loads(path.read_text())

    def _load_meta(self) -> np.ndarray:
        """Per-sample metadata, memory-mapped (an empty array cannot be mapped, so it is read)."""
        path = self.local / "meta.npy"
        if self.remote and not path.exists():
            self._download("meta.npy", path)
        return np.load(path, mmap_mode="r") if self.index["num_samples"] else np.load(path)

    def _download(self, name: str, target: Path) -> None:
        """Copy one of lmm's files of a remote folder with litdata's downloader (its credentials, its clients)."""
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        get_downloader(self.location, str(self.local), []).download_file(f"{self.location}/{name}", str(tmp))
        os.replace(tmp, target)
