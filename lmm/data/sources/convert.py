"""The converter: a LLaVA-format file + image folder, validated, into a store (lmm.data.sources.store).

Why a converter of lmm's own on top of litdata's writer: every record must be validated (structure, placeholders,
image path inside the root, image readable) with strict errors or counted rejects, the 1 GB JSON streamed rather
than loaded, and an interrupted conversion resumed with an identical result; `litdata.optimize` does none of that
and spawns worker processes, while its BinaryWriter, used here, writes in-process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lmm.constants import VERIFY_IMAGES
from lmm.data.records import (
    Record,
    RecordError,
    Repair,
    iter_raw_records,
    parse_record,
    record_problem,
    repair_record,
    resolve_image_path,
)
from lmm.data.rejects import ON_ERROR, RejectLog, SampleError, reason_kind
from lmm.data.sources.store import FORMAT, FORMAT_VERSION, PartWriter, drop_part_meta, join_parts
from lmm.log import log

VERIFY = VERIFY_IMAGES


def source_fingerprint(records: str | os.PathLike, image_root: str | os.PathLike | None) -> dict[str, Any]:
    """What identifies the input of a conversion: file path, size and modification time, and the image root."""
    st = os.stat(records)
    return {"records": str(Path(records).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "image_root": str(Path(image_root).resolve()) if image_root is not None else None,
            "format_version": FORMAT_VERSION}


def default_store_dir(cache_dir: str | os.PathLike, name: str, records: str | os.PathLike,
                      image_root: str | os.PathLike | None, settings: dict[str, Any] | None = None) -> Path:
    """A cache folder keyed by everything the conversion depends on (the input and the conversion `settings`, e.g.
    verify_images and chunk_bytes), so a changed file or setting is converted anew instead of silently reused."""
    keyed = {**source_fingerprint(records, image_root), **(settings or {})}
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / f"{name}-{key[:12]}"


def inspect_image(data: bytes, verify: str) -> tuple[str | None, tuple[int, int]]:
    """Why the bytes are not a readable image (None if they are), and the image's (height, width) from one opening
    of its header ((0, 0) if unreadable). verify: "header" (open it), "decode" (fully), "none" (a bad header is kept,
    with size (0, 0); loading the sample later rejects it, counted)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            size = (img.height, img.width)
            if verify == "decode":
                img.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return (None if verify == "none" else f"cannot read image: {e}"), (0, 0)
    return None, size


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Exclusive lock on a file beside the output: concurrent converters (DDP ranks, sweep jobs) take turns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_converted(out_dir: str | os.PathLike) -> bool:
    """Whether a conversion into `out_dir` finished (index.json is written last)."""
    return (Path(out_dir) / "index.json").exists()


def convert(records: str | os.PathLike, image_root: str | os.PathLike | None, out_dir: str | os.PathLike, *,
            name: str | None = None, on_error: str = "error", verify_images: str = "header",
            part_samples: int = 8192, chunk_bytes: int = 64 << 20, progress: bool = True,
            on_part: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Convert a LLaVA-format file (JSON list or JSONL, streamed) and its image folder into a store.

    Every record is validated (conversation structure, exactly one <image> for image records and none otherwise,
    an image path inside the image root, an image file that exists and opens). `on_error="error"` raises a
    RecordError naming the file, the record and the reason; `"skip"` writes the record with its reason to
    out_dir/rejects.jsonl and counts it in index.json. Before validation a record gets LLaVA's repairs
    (lmm.data.records.repair_record: a first turn not from human is dropped); a kept repaired record is written to
    out_dir/repairs.jsonl and counted in index.json (`repaired`, `repaired_by_reason`), apart from the rejects.
    A part holds `part_samples` samples in litdata chunks of `chunk_bytes`. An interrupted conversion resumes from
    its last finished part (`progress.json`) when the input and every setting that shapes the parts (on_error,
    verify_images, part_samples, chunk_bytes) are the same, and otherwise starts afresh, saying why; a finished one
    is returned as is. `on_part(k)` is called after part k is written. Returns the index (the content of
    index.json).
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if verify_images not in VERIFY:
        raise ValueError(f"verify_images must be one of {VERIFY}, got {verify_images!r}")
    out = Path(out_dir)
    records = Path(records)
    root = Path(image_root) if image_root is not None else records.parent
    fingerprint = source_fingerprint(records, root)
    with locked(out.parent / f".{out.name}.lock"):
        if is_converted(out):
            index = json.loads((out / "index.json").read_text())
            if index.get("source") == fingerprint:
                return index
            if index.get("version") != FORMAT_VERSION:
                raise RecordError(f"{out} holds a store made by another version of lmm (store format "
                                  f"v{index.get('version')}, this lmm writes v{FORMAT_VERSION}); remove the folder to "
                                  "convert the source again")
            raise RecordError(f"{out} holds a conversion of {index.get('source', {}).get('records')} "
                              f"({index.get('source')}), not of {fingerprint}; remove it or choose another folder")
        out.mkdir(parents=True, exist_ok=True)
        state = _resume_state(out, {"source": fingerprint, "on_error": on_error, "verify_images": verify_images,
                                    "part_samples": int(part_samples), "chunk_bytes": int(chunk_bytes)})
        rejects, repairs = RejectLog(out / "rejects.jsonl"), RejectLog(out / "repairs.jsonl")
        total_bytes = os.path.getsize(records)
        bar = _progress_bar(total_bytes, f"converting {name or records.name}", progress)
        shown = 0
        started = time.perf_counter()
        part: PartWriter | None = None

        def finish_part(next_index: int) -> None:
            nonlocal part
            if part is None or not len(part):
                return
            state["parts"].append(part.finish())
            state["consumed"] = next_index
            tmp = out / ".progress.json.tmp"
            tmp.write_text(json.dumps(state))
            os.replace(tmp, out / "progress.json")
            part = None
            if on_part is not None:
                on_part(len(state["parts"]) - 1)

        try:
            index_in = -1
            for index_in, raw, consumed in iter_raw_records(records):
                if bar is not None and consumed - shown > (1 << 20):
                    bar.update(consumed - shown)
                    shown = consumed
                if index_in < state["consumed"]:
                    continue
                try:
                    rec, image, size, fixes = _load_record(raw, records, index_in, root, verify_images)
                except RecordError as e:
                    if on_error == "error":
                        raise
                    rejects.write({"file": str(records), "record": index_in, "id": getattr(e, "rec_id", None),
                                   "reason": getattr(e, "reason", str(e)), "stage": "convert"})
                    state["rejected"] += 1
                    kind = getattr(e, "kind", "invalid record")
                    state["reasons"][kind] = state["reasons"].get(kind, 0) + 1
                    continue
                for fix in fixes:
                    repairs.write({"file": str(records), "record": index_in, "id": rec.id, "kind": fix.kind,
                                   "detail": fix.detail, "stage": "convert"})
                    state["repaired"] += 1
                    state["repair_reasons"][fix.kind] = state["repair_reasons"].get(fix.kind, 0) + 1
                if part is None:
                    part = PartWriter(out, len(state["parts"]), chunk_bytes)
                part.add(rec, image, size)
                if len(part) >= part_samples:
                    finish_part(index_in + 1)
            finish_part(index_in + 1)
            if bar is not None:  # the whole file was read: what follows the last record (e.g. "]") too
                bar.update(total_bytes - shown)
        finally:
            if bar is not None:
                bar.close()
        meta = join_parts(out, state["parts"])
        index = {"format": FORMAT, "version": FORMAT_VERSION, "name": name or records.stem,
                 "num_samples": int(len(meta)), "num_images": int(meta["has_image"].sum()),
                 "parts": state["parts"], "rejected": state["rejected"], "rejected_by_reason": state["reasons"],
                 "repaired": state["repaired"], "repaired_by_reason": state["repair_reasons"],
                 "on_error": on_error, "verify_images": verify_images, "source": fingerprint,
                 "seconds": round(time.perf_counter() - started, 2)}
        tmp = out / ".index.json.tmp"
        tmp.write_text(json.dumps(index, indent=2))
        os.replace(tmp, out / "index.json")
        (out / "progress.json").unlink(missing_ok=True)
        drop_part_meta(out, state["parts"])
        if state["repaired"]:
            log.info(f"{out}: {state['repaired']} records were repaired, not rejected ({state['repair_reasons']}); "
                     f"see {out / 'repairs.jsonl'}")
        return index


def _resume_state(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """What an interrupted conversion into `out` finished, if it used these settings; and a folder cleared of
    everything else (unfinished or unlisted parts, rejects and repairs written after the last finished
    part)."""
    state = {**settings, "consumed": 0, "parts": [], "rejected": 0, "reasons": {}, "repaired": 0, "repair_reasons": {}}
    progress_file = out / "progress.json"
    if progress_file.exists():
        previous = json.loads(progress_file.read_text())
        changed = [k for k, v in settings.items() if previous.get(k) != v]
        lost = [p["dir"] for p in previous.get("parts", []) if not (out / p["dir"]).is_dir()]
        if not changed and not lost:
            state = {**state, **previous}  # a progress file written before repairs were counted has none
        else:
            what = ", ".join("the input file (path, size or modification time)" if k == "source" else
                             f"{k} {previous.get(k)!r} -> {settings[k]!r}" for k in changed)
            why = f"made with other settings ({what})" if changed else f"its finished parts {lost} are missing"
            log.warning(f"{out}: an interrupted conversion was found, {why}; its {len(previous.get('parts', []))} "
                        "finished part(s) are discarded and the conversion starts afresh")
    for name, kept in (("rejects.jsonl", state["rejected"]), ("repairs.jsonl", state["repaired"])):
        path = out / name
        if state["consumed"] and path.exists():
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            path.write_text("".join(lines[:kept]), encoding="utf-8")
        else:
            path.unlink(missing_ok=True)
    done = {p["dir"] for p in state["parts"]}
    for stale in [*out.glob("part-*"), *out.glob(".part-*.tmp")]:
        if stale.name not in done:
            shutil.rmtree(stale)
    return state


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A bar in bytes of the input file (iter_raw_records reports bytes consumed)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, dynamic_ncols=True, mininterval=1.0)


def _load_record(raw: Any, records: Path, index: int, root: Path,
                 verify: str) -> tuple[Record, bytes | None, tuple[int, int], list[Repair]]:
    where = f"{records}: record {index}"
    try:
        rec = parse_record(raw, records, index)
    except RecordError as e:
        raise SampleError(where, raw.get("id") if isinstance(raw, dict) else None, str(e).split(": ", 2)[-1],
                          "invalid record") from e
    where = f"{where} (id {rec.id!r})"
    rec, fixes = repair_record(rec)
    reason = record_problem(rec, root)
    if reason is not None:
        after = "".join(f" (after LLaVA's repair: {fix.detail})" for fix in fixes)
        raise SampleError(where, rec.id, reason + after, reason_kind(reason))
    if rec.image is None:
        return rec, None, (0, 0), fixes
    path = resolve_image_path(root, rec.image, follow_symlinks=False)  # record_problem followed the links
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise SampleError(where, rec.id, f"image file not found: {path}", "missing image") from e
    except OSError as e:
        raise SampleError(where, rec.id, f"cannot read image {path}: {e}", "missing image") from e
    problem, size = inspect_image(data, verify)
    if problem is not None:
        raise SampleError(where, rec.id, f"{path}: {problem}", "corrupt image")
    return rec, data, size, fixes
