"""JSON Lines, read with errors that name the file and the line: training records, benchmark and answer files alike.

One reader for every JSONL file lmm reads line by line (the 665K mixture and other LLaVA-format files are streamed
by lmm.data.records.iter_raw_records instead, which also takes a JSON list). A caller passes its own error class
(e.g. lmm.eval's BenchmarkFileError) so that its callers catch what they always caught.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any


class JsonlError(ValueError):
    """A JSONL file holds a line that is not JSON, or not a JSON object; the message starts with "<file>:<line>:"."""


def read_jsonl(path: str | os.PathLike, error: Callable[[str], Exception] = JsonlError
               ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-empty line, a UTF-8 byte-order mark allowed; a line that is not a JSON
    object raises `error("<file>:<line>: <why>")`."""
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
            if not isinstance(obj, dict):
                raise error(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj
