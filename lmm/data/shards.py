"""lmm's sharded sample format: LLaVA JSON + image folder converted once into a few large files read by offset.

Why a format of our own (measurements in experiments/data_pipeline.md): litdata needs torchvision (which breaks
`import lightning` on these CPU machines unless installed and then removed again) and its combined dataset does not
resume exactly with 2 workers; mosaicml-streaming needs transformers<5. What lmm needs from a format is small:
random access by (shard, offset) so a sampler in the main process can decide the order, and per-sample metadata
(modality, length) for grouping without touching the samples. Layout of a converted source:

    index.json         what the folder holds (written last: its presence means the conversion finished)
    meta.npy           per sample: shard number, word count (LLaVA's length proxy), has_image
    shard-00000.bin    b"LMMSHRD1", u64 n, u64 offsets[n + 1], then n samples:
                       u32 length of the record JSON, the record JSON (id, image, conversations), image bytes
    rejects.jsonl      records the conversion skipped (lenient mode), one JSON line each with its reason
    progress.json      while converting: what is done, so an interrupted conversion resumes

Shards are local files (memory-mapped) or any fsspec URL (s3://, gs://, https://, memory://): remote shards are
copied on first use into a local cache, bounded by `max_cache_bytes`, so a dataset larger than the disk streams.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import mmap
import os
import struct
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lmm.data.images import ImageError
from lmm.data.records import Record, RecordError, iter_raw_records, parse_record, record_problem, resolve_image_path

MAGIC = b"LMMSHRD1"
FORMAT_VERSION = 1
META_DTYPE = np.dtype([("shard", "<u4"), ("words", "<i4"), ("has_image", "?")])
ON_ERROR = ("error", "skip")
VERIFY = ("none", "header", "decode")


# --------------------------------------------------------------------------------------------------- rejects
class RejectLog:
    """Appends one JSON line per rejected sample; each line is one O_APPEND write, so dataloader workers and ranks
    can share the file without interleaving lines."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._pid: int | None = None

    def write(self, entry: dict[str, Any]) -> None:
        if self._fd is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd, self._pid = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644), os.getpid()
        os.write(self._fd, (json.dumps(entry, ensure_ascii=False) + "\n").encode())

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_fd": None, "_pid": None}


def _truncate_lines(path: Path, keep: int) -> None:
    """Keep the first `keep` lines of a text file (rejects written after the last finished shard are redone)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:keep]), encoding="utf-8")


# -------------------------------------------------------------------------------------------------- converting
def source_fingerprint(records: str | os.PathLike, image_root: str | os.PathLike | None) -> dict[str, Any]:
    """What identifies the input of a conversion: file path, size and modification time, and the image root."""
    st = os.stat(records)
    return {"records": str(Path(records).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "image_root": str(Path(image_root).resolve()) if image_root is not None else None,
            "format_version": FORMAT_VERSION}


def default_shard_dir(cache_dir: str | os.PathLike, name: str, records: str | os.PathLike,
                      image_root: str | os.PathLike | None) -> Path:
    """A cache folder keyed by everything the conversion depends on, so a changed file is converted anew."""
    key = hashlib.sha256(json.dumps(source_fingerprint(records, image_root), sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / f"{name}-{key[:12]}"


def words_of(rec: Record) -> int:
    """LLaVA's length proxy (modality_lengths): whitespace words over all turns."""
    return sum(len(t.value.split()) for t in rec.conversations)


def check_image(data: bytes, verify: str) -> None:
    """Raise ImageError if the bytes are not a readable image ("header": identify only; "decode": full decode)."""
    if verify == "none":
        return
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            if verify == "decode":
                img.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot read image: {e}") from e


class _ShardWriter:
    """Accumulates encoded samples and writes one shard file (atomically) when it is full."""

    def __init__(self, out: Path, shard_bytes: int, shard_samples: int) -> None:
        self.out, self.shard_bytes, self.shard_samples = out, shard_bytes, shard_samples
        self.payloads: list[bytes] = []
        self.meta: list[tuple[int, int]] = []
        self.size = 0

    def add(self, payload: bytes, words: int, has_image: bool) -> bool:
        """Buffer one sample; True when the shard is full and should be flushed."""
        self.payloads.append(payload)
        self.meta.append((words, has_image))
        self.size += len(payload)
        return self.size >= self.shard_bytes or len(self.payloads) >= self.shard_samples

    def flush(self, number: int) -> dict[str, Any] | None:
        if not self.payloads:
            return None
        n = len(self.payloads)
        header = len(MAGIC) + 8 + 8 * (n + 1)
        offsets = np.empty(n + 1, dtype="<u8")
        offsets[0] = header
        offsets[1:] = header + np.cumsum([len(p) for p in self.payloads])
        name = f"shard-{number:05d}.bin"
        tmp = self.out / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(MAGIC + struct.pack("<Q", n) + offsets.tobytes())
            for p in self.payloads:
                fh.write(p)
        os.replace(tmp, self.out / name)
        meta = np.zeros(n, dtype=META_DTYPE)
        meta["shard"] = number
        meta["words"] = [w for w, _ in self.meta]
        meta["has_image"] = [h for _, h in self.meta]
        np.save(self.out / f".meta-{number:05d}.npy", meta)
        entry = {"file": name, "num_samples": n, "bytes": int(offsets[-1])}
        self.payloads, self.meta, self.size = [], [], 0
        return entry


def encode_sample(rec: Record, image: bytes | None) -> bytes:
    """One sample's bytes: u32 length + record JSON + image bytes (empty for text-only)."""
    body = json.dumps({"id": rec.id, "image": rec.image,
                       "conversations": [{"from": t.role, "value": t.value} for t in rec.conversations]},
                      ensure_ascii=False).encode()
    return struct.pack("<I", len(body)) + body + (image or b"")


def decode_sample(payload: bytes | memoryview) -> tuple[dict[str, Any], bytes | None]:
    (n,) = struct.unpack_from("<I", payload, 0)
    raw = json.loads(bytes(payload[4:4 + n]))
    image = bytes(payload[4 + n:]) if raw.get("image") is not None else None
    return raw, image


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive lock on a file beside the output: concurrent converters (DDP ranks, sweep jobs) take turns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_converted(out_dir: str | os.PathLike) -> bool:
    return (Path(out_dir) / "index.json").exists()


def convert(records: str | os.PathLike, image_root: str | os.PathLike | None, out_dir: str | os.PathLike, *,
            name: str | None = None, on_error: str = "error", verify_images: str = "header",
            shard_bytes: int = 64 << 20, shard_samples: int = 8192, progress: bool = True,
            on_shard: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Convert a LLaVA-format file (JSON list or JSONL, streamed) and its image folder into lmm shards.

    Every record is validated (conversation structure, exactly one <image> for image records and none otherwise,
    an image path inside the image root, an image file that exists and opens). `on_error="error"` raises a
    RecordError naming the file, the record and the reason; `"skip"` writes the record with its reason to
    out_dir/rejects.jsonl and counts it in index.json. An interrupted conversion resumes from its last finished
    shard (`progress.json`) when the input and every setting that shapes the shards (on_error, verify_images,
    shard_bytes, shard_samples) are the same, and otherwise starts afresh, saying why; a finished one is returned
    as is. `on_shard(k)` is called after shard k is written.
    Returns the index (the content of index.json).
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if verify_images not in VERIFY:
        raise ValueError(f"verify_images must be one of {VERIFY}, got {verify_images!r}")
    out = Path(out_dir)
    records = Path(records)
    root = Path(image_root) if image_root is not None else records.parent
    fingerprint = source_fingerprint(records, root)
    with _locked(out.parent / f".{out.name}.lock"):
        if is_converted(out):
            index = json.loads((out / "index.json").read_text())
            if index.get("source") == fingerprint:
                return index
            raise RecordError(f"{out} holds a conversion of {index.get('source', {}).get('records')} "
                              f"({index.get('source')}), not of {fingerprint}; remove it or choose another folder")
        out.mkdir(parents=True, exist_ok=True)
        progress_file = out / "progress.json"
        # everything the shards written so far depend on: resuming with another value would mix two conversions
        settings = {"source": fingerprint, "on_error": on_error, "verify_images": verify_images,
                    "shard_bytes": int(shard_bytes), "shard_samples": int(shard_samples)}
        state = {**settings, "consumed": 0, "shards": [], "rejected": 0, "reasons": {}}
        if progress_file.exists():
            previous = json.loads(progress_file.read_text())
            changed = [k for k, v in settings.items() if previous.get(k) != v]
            if not changed:
                state = previous
            else:
                what = ", ".join("the input file (path, size or modification time)" if k == "source" else
                                 f"{k} {previous.get(k)!r} -> {settings[k]!r}" for k in changed)
                _note(f"{out}: an interrupted conversion was found, made with other settings ({what}); its "
                      f"{len(previous.get('shards', []))} finished shard(s) are discarded and the conversion "
                      "starts afresh")
        if state["consumed"]:
            _truncate_lines(out / "rejects.jsonl", state["rejected"])
        else:
            (out / "rejects.jsonl").unlink(missing_ok=True)
        done_files = {s["file"] for s in state["shards"]}
        for stale in out.glob("shard-*.bin"):
            if stale.name not in done_files:
                stale.unlink()
        rejects = RejectLog(out / "rejects.jsonl")
        writer = _ShardWriter(out, shard_bytes, shard_samples)
        total_bytes = os.path.getsize(records)
        bar = _progress_bar(total_bytes, f"converting {name or records.name}", progress)
        shown = 0
        started = time.perf_counter()

        def finish_shard(next_index: int) -> None:
            entry = writer.flush(len(state["shards"]))
            if entry is None:
                return
            state["shards"].append(entry)
            state["consumed"] = next_index
            tmp = out / ".progress.json.tmp"
            tmp.write_text(json.dumps(state))
            os.replace(tmp, progress_file)
            if on_shard is not None:
                on_shard(len(state["shards"]) - 1)

        try:
            index_in = -1
            for index_in, raw, consumed in iter_raw_records(records):
                if bar is not None and consumed - shown > (1 << 20):
                    bar.update(consumed - shown)
                    shown = consumed
                if index_in < state["consumed"]:
                    continue
                try:
                    rec, image = _load_record(raw, records, index_in, root, verify_images)
                except RecordError as e:
                    if on_error == "error":
                        raise
                    reason = getattr(e, "reason", str(e))
                    rejects.write({"file": str(records), "record": index_in, "id": getattr(e, "rec_id", None),
                                   "reason": reason, "stage": "convert"})
                    state["rejected"] += 1
                    kind = getattr(e, "kind", "invalid record")
                    state["reasons"][kind] = state["reasons"].get(kind, 0) + 1
                    continue
                if writer.add(encode_sample(rec, image), words_of(rec), image is not None):
                    finish_shard(index_in + 1)
            finish_shard(index_in + 1)
            if bar is not None:  # the whole file was read: what follows the last record (e.g. "]") too
                bar.update(total_bytes - shown)
        finally:
            if bar is not None:
                bar.close()
        meta_parts = [np.load(out / f".meta-{k:05d}.npy") for k in range(len(state["shards"]))]
        meta = np.concatenate(meta_parts) if meta_parts else np.zeros(0, dtype=META_DTYPE)
        np.save(out / "meta.npy", meta)
        index = {"format": "lmm-shards", "version": FORMAT_VERSION, "name": name or records.stem,
                 "num_samples": int(len(meta)), "num_images": int(meta["has_image"].sum()),
                 "shards": state["shards"], "rejected": state["rejected"], "rejected_by_reason": state["reasons"],
                 "on_error": on_error, "verify_images": verify_images, "source": fingerprint,
                 "seconds": round(time.perf_counter() - started, 2)}
        (out / "index.json").write_text(json.dumps(index, indent=2))
        progress_file.unlink(missing_ok=True)
        for k in range(len(state["shards"])):
            (out / f".meta-{k:05d}.npy").unlink(missing_ok=True)
        return index


def _note(msg: str) -> None:
    print(f"[lmm] {msg}", file=sys.stderr, flush=True)


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A bar in bytes of the input file (iter_raw_records reports bytes consumed)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, dynamic_ncols=True, mininterval=1.0)


class SampleError(RecordError):
    """A RecordError that also carries the record id, the bare reason and a short kind (for counting)."""

    def __init__(self, where: str, rec_id: str | None = None, reason: str | None = None,
                 kind: str = "invalid record") -> None:
        # one-argument construction too: torch re-raises a worker's exception as type(e)(message)
        super().__init__(f"{where}: {reason}" if reason is not None else where)
        self.rec_id, self.reason, self.kind = rec_id, reason if reason is not None else where, kind


def _kind(reason: str) -> str:
    """A short, countable category for a validation reason."""
    for key, kind in (("placeholder", "image placeholders"), ("escapes", "image path outside root"),
                      ("absolute", "image path outside root"), ("alternate", "malformed conversation"),
                      ("first turn", "malformed conversation"), ("empty", "malformed conversation"),
                      ("turn", "malformed conversation")):
        if key in reason:
            return kind
    return "invalid record"


def _load_record(raw: Any, records: Path, index: int, root: Path, verify: str) -> tuple[Record, bytes | None]:
    where = f"{records}: record {index}"
    try:
        rec = parse_record(raw, records, index)
    except RecordError as e:
        raise SampleError(where, raw.get("id") if isinstance(raw, dict) else None, str(e).split(": ", 2)[-1],
                          "invalid record") from e
    where = f"{where} (id {rec.id!r})"
    reason = record_problem(rec, root)
    if reason is not None:
        raise SampleError(where, rec.id, reason, _kind(reason))
    if rec.image is None:
        return rec, None
    path = resolve_image_path(root, rec.image, follow_symlinks=False)  # record_problem followed the links
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise SampleError(where, rec.id, f"image file not found: {path}", "missing image") from e
    except OSError as e:
        raise SampleError(where, rec.id, f"cannot read image {path}: {e}", "missing image") from e
    try:
        check_image(data, verify)
    except ImageError as e:
        raise SampleError(where, rec.id, f"{path}: {e}", "corrupt image") from e
    return rec, data


# ------------------------------------------------------------------------------------------------------ reading
def is_remote(location: str) -> bool:
    """Whether a shard location is an fsspec URL (file:// and plain paths are local folders)."""
    return "://" in location and not location.startswith("file://")


class ShardReader:
    """Random access to the samples of one converted source, local (mmap) or remote (fsspec + local cache).

    Open file handles are per process and dropped when pickled, so the reader can be handed to dataloader workers.
    """

    def __init__(self, location: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                 max_cache_bytes: int | None = None, max_open: int = 32) -> None:
        self.location = str(location)
        self.remote = is_remote(self.location)
        if self.remote:
            base = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "lmm-shard-cache"
            self.local = base / hashlib.sha256(self.location.encode()).hexdigest()[:16]
            self.local.mkdir(parents=True, exist_ok=True)
        else:
            self.local = Path(self.location.removeprefix("file://"))
        self.max_cache_bytes, self.max_open = max_cache_bytes, max_open
        index_path = self._fetch("index.json")
        if not index_path.exists():
            raise FileNotFoundError(f"{self.location}: no index.json (not converted, or the conversion did not finish)")
        self.index = json.loads(index_path.read_text())
        if self.index.get("format") != "lmm-shards" or self.index.get("version") != FORMAT_VERSION:
            raise ValueError(f"{self.location}: not an lmm-shards v{FORMAT_VERSION} folder")
        self.meta = self._load_meta()
        counts = [s["num_samples"] for s in self.index["shards"]]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._open: OrderedDict[int, tuple[mmap.mmap, np.ndarray, Any]] = OrderedDict()

    def __len__(self) -> int:
        return int(self.index["num_samples"])

    @property
    def has_image(self) -> np.ndarray:
        return np.asarray(self.meta["has_image"])

    @property
    def words(self) -> np.ndarray:
        return np.asarray(self.meta["words"])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()
        state["meta"] = None  # re-mapped lazily in the worker
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.meta = self._load_meta()

    def _load_meta(self) -> np.ndarray:
        """Per-sample metadata, memory-mapped (an empty array cannot be mapped, so it is read)."""
        path = self._fetch("meta.npy")
        return np.load(path, mmap_mode="r") if self.index["num_samples"] else np.load(path)

    def shard_file(self, i: int) -> str:
        """The shard file holding sample i (used in error messages)."""
        k = int(np.searchsorted(self.starts, i, side="right") - 1)
        return f"{self.location}/{self.index['shards'][k]['file']}"

    def read(self, i: int) -> tuple[dict[str, Any], bytes | None]:
        """The raw record dict and the image bytes (None for text-only) of sample i."""
        if not 0 <= i < len(self):
            raise IndexError(f"{self.location}: sample {i} out of range ({len(self)} samples)")
        k = int(np.searchsorted(self.starts, i, side="right") - 1)
        mm, offsets, _ = self._shard(k)
        j = i - int(self.starts[k])
        return decode_sample(memoryview(mm)[int(offsets[j]):int(offsets[j + 1])])

    def record(self, i: int) -> tuple[Record, bytes | None]:
        raw, image = self.read(i)
        return parse_record(raw, self.location, i), image

    def _shard(self, k: int) -> tuple[mmap.mmap, np.ndarray, Any]:
        if k in self._open:
            self._open.move_to_end(k)
            return self._open[k]
        path = self._fetch(self.index["shards"][k]["file"])
        fh = open(path, "rb")  # noqa: SIM115 - kept open while mapped, closed on eviction
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        if mm[:len(MAGIC)] != MAGIC:
            raise ValueError(f"{path}: not an lmm shard (bad magic)")
        (n,) = struct.unpack_from("<Q", mm, len(MAGIC))
        offsets = np.frombuffer(mm, dtype="<u8", count=n + 1, offset=len(MAGIC) + 8).copy()
        self._open[k] = (mm, offsets, fh)
        while len(self._open) > self.max_open:
            _, (old_mm, _, old_fh) = self._open.popitem(last=False)
            old_mm.close()
            old_fh.close()
        return self._open[k]

    def _fetch(self, name: str) -> Path:
        """The local path of a file of the folder, copying it from remote storage into the cache if needed."""
        local = self.local / name
        if not self.remote or local.exists():
            return local
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.location)
        remote = f"{root.rstrip('/')}/{name}"
        if not fs.exists(remote):
            return local  # the caller reports what is missing
        tmp = self.local / f".{name}.{os.getpid()}.tmp"
        fs.get_file(remote, str(tmp))
        os.replace(tmp, local)
        self._evict(keep=local)
        return local

    def _evict(self, keep: Path) -> None:
        """Delete the least recently fetched shard files beyond max_cache_bytes (open maps stay valid on POSIX)."""
        if self.max_cache_bytes is None:
            return
        files = sorted(self.local.glob("shard-*.bin"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for p in files:
            if total <= self.max_cache_bytes:
                break
            if p != keep:
                total -= p.stat().st_size
                p.unlink(missing_ok=True)
