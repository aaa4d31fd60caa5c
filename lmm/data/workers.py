"""How DataLoader worker processes start: with the platform's own start method even inside a process whose default
was changed by a launcher. joblib's loky workers (hydra/launcher=parallel) set the default to 'loky', whose Process
the DataLoader cannot start ("'Process' object has no attribute 'env'"); every loader in lmm asks here."""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext

STANDARD = ("fork", "spawn", "forkserver")


def worker_context(num_workers: int) -> BaseContext | None:
    """None (torch's default) where the default start method is a standard one or no workers start; otherwise the
    platform's first standard method (fork on Linux, spawn on macOS and Windows)."""
    if num_workers <= 0 or multiprocessing.get_start_method(allow_none=True) in (None, *STANDARD):
        return None
    method = next(m for m in multiprocessing.get_all_start_methods() if m in STANDARD)
    return multiprocessing.get_context(method)
