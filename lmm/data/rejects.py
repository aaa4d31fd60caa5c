"""Bad input, reported: the error that names file, record and reason, and the rejects file of lenient runs.

Shared by the converter (validation of records and images) and the sample builder (decode, template, length), so
a rejected sample reads the same wherever it was found and is counted under the same short kinds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lmm.constants import ON_ERROR
from lmm.data.records import RecordError

__all__ = ["ON_ERROR", "RejectLog", "SampleError", "reason_kind"]  # ON_ERROR: the choices of `on_error`



class SampleError(RecordError):
    """A RecordError that also carries the record id, the bare reason and a short kind (for counting)."""

    def __init__(self, where: str, rec_id: str | None = None, reason: str | None = None,
                 kind: str = "invalid record") -> None:
        # one-argument construction too: torch re-raises a worker's exception as type(e)(message)
        super().__init__(f"{where}: {reason}" if reason is not None else where)
        self.rec_id, self.reason, self.kind = rec_id, reason if reason is not None else where, kind


def reason_kind(reason: str) -> str:
    """A short, countable category for a validation reason of lmm.data.records.record_problem."""
    for key, kind in (("placeholder", "image placeholders"), ("escapes", "image path outside root"),
                      ("absolute", "image path outside root"), ("alternate", "malformed conversation"),
                      ("first turn", "malformed conversation"), ("empty", "malformed conversation"),
                      ("turn", "malformed conversation")):
        if key in reason:
            return kind
    return "invalid record"


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
