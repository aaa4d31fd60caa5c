"""Where a result came from: lmm's git commit and the library versions, written into run folders and results."""

from __future__ import annotations

import contextlib
import platform
import subprocess
from pathlib import Path
from typing import Any


def _git(*args: str) -> str | None:
    with contextlib.suppress(Exception):
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    return None


def provenance() -> dict[str, Any]:
    """The commit lmm ran from (and whether it had local changes), the host, the versions that shape numbers and the
    torch threads the run had."""
    import lightning
    import torch
    import transformers

    return {"git_commit": _git("rev-parse", "HEAD"), "git_dirty": bool(_git("status", "--porcelain")),
            "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
            "lightning": lightning.__version__, "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads()}  # timings depend on it (hydra/launcher=parallel sets it)
