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


class _Stdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is when a line is logged (redirections and pytest's capture included)."""

    @property
    def stream(self):  # noqa: ANN201
        return sys.stdout

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def _logger() -> logging.Logger:
    logger = logging.getLogger("lmm")
    if not logger.handlers:
        handler = _Stdout()
        handler.setFormatter(_Format())
        handler.addFilter(_GlobalZero())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # Hydra's or the user's root handlers would print every line twice
    return logger


log = _logger()


# Lines other libraries print on every run that tell an lmm user nothing; each is dropped where it is emitted, by
# its exact text, so that any other message of the same libraries (a real warning) still shows.
_LIGHTNING_CHATTER = ("GPU available:", "TPU available:", "HPU available:", "💡 Tip:", "`Trainer.fit` stopped:")
_WARNINGS_SAID_NOTHING = (
    r"Found \d+ module\(s\) in eval mode",  # the frozen encoder is in eval mode on purpose (dropout off)
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # torch's pytree API as Lightning 2.6 calls it
)


class _DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_LIGHTNING_CHATTER)


def quiet_third_party() -> None:
    """Silence the third-party lines that say nothing to a user of lmm (idempotent)."""
    import warnings

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropChatter) for f in target.filters):
            target.addFilter(_DropChatter())
    for pattern in _WARNINGS_SAID_NOTHING:
        warnings.filterwarnings("ignore", message=pattern)
