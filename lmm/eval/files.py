"""Benchmark and answer files: reading them (JSON, TSV; JSONL through lmm.data.jsonl) with errors that name the file
and line, reading and re-scoring LLaVA-format answer files, writing upload files, and hashing them all.

Benchmark releases are large, hand-assembled and often edited locally; an error deep inside scoring ("KeyError 5")
costs an evaluation run, so every reader here says which file, which line and which field is wrong.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmm.data.jsonl import read_jsonl

if TYPE_CHECKING:  # the benchmarks read their files through this module
    from lmm.eval.tasks.base import Benchmark, Question, Scored

# eval/<benchmark>/per_question.jsonl: one line per question (Benchmark.question_record), read by lmm.compare
PER_QUESTION_FILE = "per_question.jsonl"


class BenchmarkFileError(ValueError):
    """A benchmark file is missing or malformed; the message starts with "<file>:<line>:" where known."""


def where(path: str | os.PathLike, line: int | None = None) -> str:
    """"file:line" (or just the file) for error messages and Question.where."""
    return f"{path}:{line}" if line is not None else str(path)


def require_file(path: str | os.PathLike | None, what: str) -> Path:
    """The path as a Path, or a BenchmarkFileError that says which benchmark file is missing and where to get it."""
    if path is None or str(path) in ("", "None"):
        raise BenchmarkFileError(f"no {what} configured")
    p = Path(path)
    if not p.exists():
        raise BenchmarkFileError(f"{what} not found: {p} (see conf/eval/benchmark/*.yaml for the expected layout)")
    return p


def read_json(path: str | os.PathLike) -> Any:
    """A whole JSON document; a syntax error names file and line."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise BenchmarkFileError(f"{where(p, e.lineno)}: invalid JSON ({e.msg} at column {e.colno})") from e


def json_list_lines(path: str | os.PathLike, items: list[Any]) -> list[int | None]:
    """Best-effort line number of each top-level item of a JSON list file (for error messages).

    Exact for files written one item per line or pretty-printed with each item starting on its own line; None when
    the file is one long line (the item index is then given instead).
    """
    text = Path(path).read_text(encoding="utf-8-sig")
    if text.count("\n") < len(items):
        return [None] * len(items)
    decoder, lines, pos, line = json.JSONDecoder(), [], text.index("[") + 1, 1 + text[: text.index("[")].count("\n")
    for _ in items:
        while pos < len(text) and text[pos] in " \t\r\n,":
            line += text[pos] == "\n"
            pos += 1
        lines.append(line)
        _, end = decoder.raw_decode(text, pos)
        line += text[pos:end].count("\n")
        pos = end
    return lines


def field(obj: Mapping[str, Any], key: str, at: str, types: type | tuple[type, ...] | None = None) -> Any:
    """obj[key], or a BenchmarkFileError "<at>: missing field 'key'" / "field 'key' must be ..."."""
    if key not in obj or obj[key] is None:
        raise BenchmarkFileError(f"{at}: missing field {key!r} (has {sorted(obj)[:12]})")
    value = obj[key]
    if types is not None and not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise BenchmarkFileError(f"{at}: field {key!r} must be {names}, got {type(value).__name__} {value!r:.80}")
    return value


def read_tsv(path: str | os.PathLike, required: tuple[str, ...] = ()) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row dict) of a TSV with a header (MMBench); rows whose field count is off name their line."""
    p = Path(path)
    csv.field_size_limit(1 << 30)  # base64 images sit in one field
    with open(p, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        try:
            header = next(reader)
        except StopIteration as e:
            raise BenchmarkFileError(f"{where(p, 1)}: empty TSV file (no header)") from e
        missing = [c for c in required if c not in header]
        if missing:
            raise BenchmarkFileError(f"{where(p, 1)}: TSV header lacks columns {missing} (has {header})")
        for row in reader:
            lineno = reader.line_num
            if not row or row == [""]:
                continue
            if len(row) != len(header):
                raise BenchmarkFileError(f"{where(p, lineno)}: {len(row)} fields, the header has {len(header)}")
            yield lineno, dict(zip(header, row, strict=True))


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Content hash of a file (or of a folder's file list with sizes), recorded with every score in results.json."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        for f in sorted(p.rglob("*")):
            if f.is_file():
                h.update(f"{f.relative_to(p)}\t{f.stat().st_size}\n".encode())
        return "dir:" + h.hexdigest()
    with open(p, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json(path: Path, obj: Any) -> Path:
    """Write an upload/official-scorer JSON file (creating its folder) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False))
    return path


def write_per_question(path: Path, bench: Benchmark, qs: list[Question], texts: list[str],
                       per_question: list[float | None]) -> Path:
    """Write each question's score and record (Benchmark.question_record), in question order, as JSON lines: the
    answer file alone cannot say which questions were right (and MME's ids are not unique), so a comparison of runs
    that resamples questions reads this file instead of re-scoring."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for q, text, score in zip(qs, texts, per_question, strict=True):
            f.write(json.dumps(bench.question_record(q, text, score), ensure_ascii=False) + "\n")
    return path


def read_answer_file(bench: Benchmark, path: str | os.PathLike) -> list[str]:
    """The texts of a LLaVA-format answer file, checked line by line against the benchmark's questions.

    The file must follow question-file order (LLaVA's merged answer files do), as POPE's and MME's scorers assume.
    """
    p = require_file(path, "answer file")
    qs = bench.questions()
    rows = list(read_jsonl(p, BenchmarkFileError))
    if len(rows) != len(qs):
        raise BenchmarkFileError(f"{p}: {len(rows)} answers for {len(qs)} questions of {bench.name}")
    texts = []
    for (lineno, row), q in zip(rows, qs, strict=True):
        at = where(p, lineno)
        if field(row, "question_id", at) != q.question_id:
            raise BenchmarkFileError(f"{at}: question_id {row['question_id']!r}, but question {q.uid} of "
                                     f"{bench.name} ({q.where}) is {q.question_id!r}: answers out of order?")
        texts.append(field(row, "text", at, str))
    return texts


def score_answer_file(bench: Benchmark, path: str | os.PathLike) -> Scored:
    """Score an existing answer file (e.g. LLaVA's released answers) with the benchmark's official rules."""
    return bench.score(bench.questions(), read_answer_file(bench, path))
