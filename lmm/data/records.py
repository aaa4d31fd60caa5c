"""LLaVA-format records: loading (JSON list or JSONL) and validation with errors that name file, record and reason."""

from __future__ import annotations

import codecs
import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmm.constants import IMAGE_PLACEHOLDER

HUMAN, GPT = "human", "gpt"


class RecordError(ValueError):
    """A record (or the file holding it) cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Turn:
    """One conversation turn; role is LLaVA's "from" field ("human" or "gpt")."""

    role: str
    value: str


@dataclass
class Record:
    """One training/eval sample: an optional image path (relative to the image root) and its conversation."""

    id: str
    image: str | None
    conversations: list[Turn] = field(default_factory=list)


@dataclass(frozen=True)
class Repair:
    """A change LLaVA's own preprocessing makes to a raw record, so that the record is kept rather than rejected.

    `kind` is the short name it is counted under (like a reject's kind); `detail` says what was changed.
    """

    kind: str
    detail: str


FIRST_TURN_DROPPED = "dropped first turn not human"


def repair_record(rec: Record) -> tuple[Record, list[Repair]]:
    """The record LLaVA trains on, and the repairs that made it: a first turn not from human is dropped.

    LLaVA's `preprocess` does `if roles[source[0]["from"]] != conv.roles[0]: source = source[1:]` (spec §2.3), once:
    what is left must pass `record_problem` like any record (so a conversation that still starts with a gpt turn,
    or is empty, is rejected). The input record is not modified.
    """
    convs = rec.conversations
    if not convs or convs[0].role == HUMAN:
        return rec, []
    detail = f"dropped turn 0 (from {convs[0].role!r}): the first turn must be from {HUMAN!r}"
    repair = Repair(FIRST_TURN_DROPPED, detail)
    return Record(rec.id, rec.image, list(convs[1:])), [repair]


def _where(source: Any, index: int | None, rec_id: str | None = None) -> str:
    """Location prefix used by every error message."""
    where = f"{source}: record {index}" if index is not None else f"{source}"
    return f"{where} (id {rec_id!r})" if rec_id is not None else where


def parse_record(raw: Any, source: Any = "<memory>", index: int | None = None) -> Record:
    """Turn one decoded JSON object into a Record, rejecting wrong types (content checks live in validate_record)."""
    if not isinstance(raw, dict):
        raise RecordError(f"{_where(source, index)}: expected a JSON object, got {type(raw).__name__}")
    rec_id = str(raw["id"]) if raw.get("id") is not None else str(index)
    image = raw.get("image")
    if image is not None and not isinstance(image, str):
        raise RecordError(f"{_where(source, index, rec_id)}: 'image' must be a string, got {type(image).__name__}")
    convs = raw.get("conversations") or []
    if not isinstance(convs, list):
        raise RecordError(f"{_where(source, index, rec_id)}: 'conversations' must be a list")
    turns = []
    for j, turn in enumerate(convs):
        if not (isinstance(turn, dict) and isinstance(turn.get("from"), str) and isinstance(turn.get("value"), str)):
            raise RecordError(f"{_where(source, index, rec_id)}: turn {j} needs string 'from' and 'value' fields")
        turns.append(Turn(turn["from"], turn["value"]))
    return Record(id=rec_id, image=image, conversations=turns)


def _is_json(text: str) -> bool:
    """Whether the whole text is one JSON value (used to explain a pretty-printed object given as JSONL)."""
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def load_records(path: str | os.PathLike) -> list[Record]:
    """Read a JSON list or JSONL file (decided by content) into Records; malformed JSON names file and line."""
    text = Path(path).read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        try:
            raws = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from e
        return [parse_record(raw, path, i) for i, raw in enumerate(raws)]
    records: list[Record] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            if not records and _is_json(text):
                raise RecordError(f"{path}: expected a JSON list or JSONL, got one multi-line JSON value") from e
            raise RecordError(f"{path}: line {lineno}: invalid JSON ({e.msg})") from e
        try:
            records.append(parse_record(raw, path, len(records)))
        except RecordError as e:
            raise RecordError(f"{e} (line {lineno})") from e
    return records


def resolve_image_path(image_root: str | os.PathLike, rel: str, follow_symlinks: bool = True) -> Path:
    """Join an image path to its root, refusing absolute paths and paths that climb out of the root.

    Climbing out is checked on the path as written and, with `follow_symlinks`, on the real file too: a symlink
    inside the root that points elsewhere would otherwise let a record read any file on the machine.
    """
    if not rel:
        raise RecordError("empty image path")
    if os.path.isabs(rel) or Path(rel).is_absolute():
        raise RecordError(f"image path {rel!r} is absolute; it must be relative to the image root")
    root = os.path.normpath(os.path.abspath(image_root))
    full = os.path.normpath(os.path.join(root, rel))
    if os.path.commonpath([root, full]) != root:
        raise RecordError(f"image path {rel!r} escapes the image root {str(image_root)!r}")
    if follow_symlinks and full != root:
        # only links below the root can lead out of it: look for one (an lstat per part) before resolving
        path = root
        for part in full[len(root):].lstrip(os.sep).split(os.sep):
            path = os.path.join(path, part)
            if os.path.islink(path):
                real_root, real = _realpath(root), os.path.realpath(full)
                if os.path.commonpath([real_root, real]) != real_root:
                    raise RecordError(f"image path {rel!r} escapes the image root {str(image_root)!r} through a "
                                      f"symlink (it resolves to {real!r})")
                break
    return Path(full)


@functools.lru_cache(maxsize=64)
def _realpath(path: str) -> str:
    """The real path of an image root (asked once per record, so remembered)."""
    return os.path.realpath(path)


def record_problem(rec: Record, image_root: str | os.PathLike | None = None) -> str | None:
    """The first reason the record is unusable (structure, placeholders, image path), or None when it is fine.

    Without an `image_root` the image path is only checked as written (no file system access): that is the check
    for samples whose image bytes were already taken from their real root when converting.
    """
    convs = rec.conversations
    if not convs:
        return "missing or empty 'conversations'"
    if convs[0].role != HUMAN:
        return f"first turn must be from {HUMAN!r}, got {convs[0].role!r}"
    for j, turn in enumerate(convs):
        expected = HUMAN if j % 2 == 0 else GPT
        if turn.role != expected:
            return f"turns must alternate human/gpt: turn {j} is from {turn.role!r}, expected {expected!r}"
        if not turn.value.strip():
            return f"turn {j} has an empty value"
    if len(convs) % 2:
        return f"turns must alternate human/gpt and end with {GPT!r}: last turn is from {convs[-1].role!r}"
    n_placeholders = sum(t.value.count(IMAGE_PLACEHOLDER) for t in convs)
    if rec.image is not None:
        if n_placeholders != 1:
            return f"image record must contain exactly one {IMAGE_PLACEHOLDER} placeholder, found {n_placeholders}"
        try:
            resolve_image_path(image_root if image_root is not None else ".", rec.image,
                               follow_symlinks=image_root is not None)
        except RecordError as e:
            return str(e)
    elif n_placeholders:
        return f"text-only record contains {n_placeholders} {IMAGE_PLACEHOLDER} placeholder(s)"
    return None


def validate_record(
    rec: Record, source: Any = "<memory>", index: int | None = None, image_root: str | os.PathLike | None = None
) -> Record:
    """Check a record's structure (roles, placeholders, image path) and return it; raise RecordError otherwise.

    This checks the record as it will be trained on: a raw record gets LLaVA's `repair_record` first (as the
    converter does), or a leading gpt turn is an error here."""
    reason = record_problem(rec, image_root)
    if reason is not None:
        raise RecordError(f"{_where(source, index, rec.id)}: {reason}")
    return rec


def iter_raw_records(path: str | os.PathLike, chunk_chars: int = 1 << 20) -> Iterator[tuple[int, Any, int]]:
    """Stream (index, decoded JSON object, bytes of the file consumed so far) from a JSON list or JSONL file.

    The 665K mixture is a ~1 GB JSON list: this decodes one object at a time from a bounded buffer, so converting
    or carving it never holds the whole file (json.load does). The third value is in bytes, like the file size,
    so that progress bars reach their total for non-ASCII text too (ShareGPT); it is counted by encoding each
    stretch of consumed text once, and newlines are not translated so that CRLF files count right.
    """
    decoder = json.JSONDecoder()
    with open(path, "rb") as raw_fh:
        bom = len(codecs.BOM_UTF8) if raw_fh.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8 else 0
    with open(path, encoding="utf-8-sig", newline="") as fh:
        buf, pos, lines, index = fh.read(chunk_chars), 0, 0, 0
        counted, done_bytes = 0, bom  # buf[:counted] is already in done_bytes
        eof = len(buf) < chunk_chars

        def count_to_pos() -> None:
            nonlocal counted, done_bytes
            done_bytes += len(buf[counted:pos].encode("utf-8"))
            counted = pos

        def fill() -> None:
            nonlocal buf, pos, lines, eof, counted
            if not eof:
                more = fh.read(chunk_chars)
                eof = len(more) < chunk_chars
                count_to_pos()
                lines += buf.count("\n", 0, pos)
                buf, pos, counted = buf[pos:] + more, 0, 0

        def skip(chars: str) -> None:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in chars:
                    pos += 1
                if pos < len(buf) or eof:
                    return
                fill()

        skip(" \t\r\n")
        is_list = buf[pos:pos + 1] == "["
        if is_list:
            pos += 1
        while True:
            skip(" \t\r\n," if is_list else " \t\r\n")
            if pos >= len(buf):
                if is_list:
                    raise RecordError(f"{path}: unterminated JSON list")
                return
            if is_list and buf[pos] == "]":
                return
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                    if end == len(buf) and not eof:  # a number or literal may continue in the next chunk
                        raise json.JSONDecodeError("split", buf, end)
                    break
                except json.JSONDecodeError as e:
                    if eof:
                        line = lines + buf.count("\n", 0, e.pos) + 1
                        raise RecordError(f"{path}: line {line}: record {index}: invalid JSON ({e.msg})") from e
                    fill()
            pos = end
            count_to_pos()
            yield index, obj, done_bytes
            index += 1
