"""One logger for the whole package: `[lmm] ...` lines on stdout, from the job's global rank zero only.

Every module writes `from lmm.log import log` and `log.info(...)` (or `.warning`), never `print`: the other ranks of
a DDP/FSDP job stay quiet, and a user can raise or lower lmm's verbosity with the standard `logging` module
(`logging.getLogger("lmm").setLevel(...)`). Rank zero is known before the Trainer exists (Lightning reads RANK,
SLURM_PROCID or LOCAL_RANK at import), so the pipeline's first lines are not printed once per process.
"""

from __future__ import annotations

import logging
import os
import sys

from lightning_utilities.core.rank_zero import rank_zero_only


def is_global_zero() -> bool:
    """Rank 0 of the whole job, also before the Trainer exists."""
    rank = getattr(rank_zero_only, "rank", None)
    if rank is None:  # Lightning not imported yet: read what its launchers and SLURM set
        rank = next((int(os.environ[k]) for k in ("RANK", "SLURM_PROCID", "LOCAL_RANK") if k in os.environ), 0)
    return rank == 0


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno <= logging.INFO else f"{record.levelname.lower()}: "
        return f"[lmm] {level}{record.getMessage()}"


class _GlobalZero(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return is_global_zero()


def _logger() -> logging.Logger:
    logger = logging.getLogger("lmm")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(_Format())
        handler.addFilter(_GlobalZero())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # Hydra's or the user's root handlers would print every line twice
    return logger


log = _logger()
